"""Keeps the probe scheduler's targets in step with the servers the LB lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from lbhealthd.config import PoolConfig, ProbeConfig
from lbhealthd.model import Member, ServerId
from lbhealthd.probes.aiohttp_prober import render_url
from lbhealthd.probes.scheduler import Target


class Syncs(Protocol):
    def sync(self, targets: Mapping[ServerId, Target]) -> None: ...


class ProbeTargets:
    """Every server's probe target, rebuilt only where something changed.

    A target is rebuilt only for a server whose address, port or pool probe config changed,
    and the scheduler hears of the set only when something did: at 10,000 servers, rendering
    every URL every round cost more than deciding.
    """

    def __init__(self, scheduler: Syncs) -> None:
        self.scheduler = scheduler
        self.current: Mapping[ServerId, Target] = {}
        self._cache: dict[ServerId, tuple[ProbeConfig, tuple[str, int], Target]] = {}
        self._read: list[tuple[PoolConfig, Mapping[ServerId, Member] | None]] = []

    def sync(
        self, pools: Sequence[PoolConfig], members: Mapping[str, Mapping[ServerId, Member]]
    ) -> None:
        read = [(pool, members.get(pool.name)) for pool in pools]
        if len(read) == len(self._read) and all(
            p is q and m is n for (p, m), (q, n) in zip(read, self._read, strict=True)
        ):
            return  # the same configs and the same member maps: nothing to look at
        self._read = read
        cache = self._cache
        targets: dict[ServerId, Target] = {}
        changed = False
        for pool in pools:
            probe = pool.probe
            for sid, m in members.get(pool.name, {}).items():
                known = cache.get(sid)
                if known is not None and known[0] is probe and known[1] == (m.address, m.port):
                    targets[sid] = known[2]
                    continue
                url = render_url(probe.url, name=sid.server, address=m.address, port=m.port)
                target = Target(
                    url, probe.interval, probe.timeout, probe.load_fields, probe.confirm_interval
                )
                cache[sid] = (probe, (m.address, m.port), target)
                targets[sid] = target
                changed = True
        if changed or len(targets) != len(self.current):
            for gone in [sid for sid in cache if sid not in targets]:
                del cache[gone]
            self.current = targets
            self.scheduler.sync(targets)
