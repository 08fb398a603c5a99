"""Reading the pools from the load balancer, once per round, and what a read tells.

Per pool it keeps the members of the last successful read and those of them that not every
endpoint of an HA pair lists (the pair disagrees on the pool's membership), the error of the
last failed one (logged when it starts and when it ends, not every round), the LB's *epoch* (a
change means the LB lost its runtime state: lbhealthd's changes must be applied again), the
server set recorded at the first read of a pool whose servers are discovered (the audit expects
that set from then on) and since when each server has been in its LB admin state.

Each member map is replaced at every read, never edited, so a round report can hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from lbhealthd.config import PoolConfig
from lbhealthd.drivers import Driver
from lbhealthd.errors import LbhealthdError
from lbhealthd.model import Member, ServerId
from lbhealthd.server_set import address_of
from lbhealthd.store.memory import DISCOVERED, discovered_blob, recorded_sets
from lbhealthd.writer.journal import Journal

log = structlog.get_logger("lbhealthd.daemon.reconciler")


class PoolReader:
    """The LB's view of every pool between rounds."""

    def __init__(
        self,
        driver: Driver,
        journal: Journal,
        wall: Callable[[], float],
        owned: Callable[[str], list[str]],
    ) -> None:
        self.driver = driver
        self.owned = owned  # the servers of a pool lbhealthd holds (logged at an LB restart)
        self.journal = journal
        self.wall = wall
        store = journal.store
        self.members: dict[str, Mapping[ServerId, Member]] = {}
        self.partial: dict[str, frozenset[ServerId]] = {}  # listed by some endpoints only
        self.unavailable: dict[str, str] = {}  # pool -> error of the last failed read
        # pool -> the endpoints of an HA pair its last read could not reach, with why
        self.failed_endpoints: dict[str, dict[str, str]] = {}
        self.counters: dict[str, int] = {}  # pool -> the generation of its counters (a new one
        # with every read of them: the LB's counters are read at their own cadence)
        self.epochs: dict[str, str] = dict((store.load_blob("epochs") or {}).get("pools", {}))
        self.discovered, self.addresses = recorded_sets(store.load_blob(DISCOVERED))
        self.state_since: dict[ServerId, float] = {}  # wall time of the last admin change
        self._admin: dict[ServerId, str] = {}
        self._filters: dict[str, object] = {}  # the pool's `servers` list the last read used

    async def read(self, pool: PoolConfig) -> tuple[Mapping[ServerId, Member], bool] | None:
        """The pool's members and whether the LB restarted since the last read; None (logged)
        when the LB could not be read."""
        try:
            snap = await self.driver.snapshot(pool.name)
        except LbhealthdError as exc:
            if self.unavailable.get(pool.name) != str(exc):
                log.error("lb_unavailable", pool=pool.name, error=str(exc))
            self.unavailable[pool.name] = str(exc)
            return None
        if pool.name in self.unavailable:
            log.info("lb_available", pool=pool.name)
            del self.unavailable[pool.name]
        self._note_endpoints(pool.name, snap.failed)
        self.counters[pool.name] = snap.counters
        previous = self.members.get(pool.name, {})
        if (
            pool.name in self.members
            and self._filters.get(pool.name) == pool.servers
            and not snap.partial
            and not self.partial.get(pool.name)
            and _same(snap.members, previous)
        ):
            # Nothing changed (the driver keeps an unchanged server's Member): the same map,
            # so what is derived from it can be kept too.
            return previous, self._note_epoch(pool.name, snap.epoch)
        self._filters[pool.name] = pool.servers
        wanted = set(pool.servers) if pool.servers is not None else None
        members = {m.id: m for m in snap.members if wanted is None or m.id.server in wanted}
        for sid in sorted(members.keys() - previous.keys()):
            if previous:
                log.info("server_discovered", server=str(sid))
        for sid in sorted(previous.keys() - members.keys()):
            log.warning("server_vanished", server=str(sid))
            self.state_since.pop(sid, None)
            self._admin.pop(sid, None)
        self.members[pool.name] = members
        self.partial[pool.name] = (
            frozenset(sid for sid in members if sid.server in snap.partial)
            if snap.partial
            else frozenset()
        )
        wall = self.wall()
        for sid, member in members.items():
            if self._admin.get(sid) != member.admin.value:
                self._admin[sid] = member.admin.value
                self.state_since[sid] = wall
        self._record_servers(pool, members)
        return members, self._note_epoch(pool.name, snap.epoch)

    def _note_endpoints(self, pool: str, failed: Mapping[str, str]) -> None:
        """Log an endpoint of an HA pair that stopped answering (or whose error changed) and
        one that answers again: the read stands on the others meanwhile."""
        before = self.failed_endpoints.get(pool, {})
        for endpoint in sorted(failed):
            if before.get(endpoint) != failed[endpoint]:
                log.warning(
                    "lb_endpoint_unavailable",
                    pool=pool,
                    endpoint=endpoint,
                    error=failed[endpoint],
                    note="read from the other endpoints; changes are sent again until it answers",
                )
        for endpoint in sorted(before.keys() - failed.keys()):
            log.info("lb_endpoint_available", pool=pool, endpoint=endpoint)
        self.failed_endpoints[pool] = dict(failed)

    def _note_epoch(self, pool: str, epoch: str) -> bool:
        """True when the LB lost its runtime state since the last read (or it is unknown)."""
        before = self.epochs.get(pool)
        if before == epoch:
            return False
        if before is not None:
            log.warning(
                "lb_restarted",
                pool=pool,
                before=before,
                now=epoch,
                owned=self.owned(pool),
                note="runtime changes were lost; re-applying what lbhealthd owns",
            )
        self.epochs[pool] = epoch
        self._stage("epochs", lambda: {"pools": dict(self.epochs)})
        return True

    def _record_servers(self, pool: PoolConfig, members: Mapping[ServerId, Member]) -> None:
        if pool.servers is not None or pool.name in self.discovered or not members:
            return
        self._set_servers(pool.name, members)
        log.info(
            "servers_recorded",
            pool=pool.name,
            servers=self.discovered[pool.name],
            note="the audit expects this set from now on",
        )

    def _set_servers(self, pool: str, members: Mapping[ServerId, Member]) -> None:
        self.discovered[pool] = sorted(sid.server for sid in members)
        self.addresses[pool] = {sid.server: address_of(m) for sid, m in members.items()}
        self._stage(DISCOVERED, lambda: discovered_blob(self.discovered, self.addresses))

    # An operator's changes to the recorded set (lbhealthd audit --accept, lbhealthd forget).

    def accept(self, pool: str) -> list[str] | None:
        """Record the servers of ``pool``'s last read as its expected set; the set before."""
        before = self.discovered.get(pool)
        self._set_servers(pool, self.members.get(pool, {}))
        return before

    def forget(self, sid: ServerId) -> bool:
        """Drop ``sid`` from its pool's recorded set; True when it was in it."""
        self.state_since.pop(sid, None)
        self._admin.pop(sid, None)
        if sid.server not in self.discovered.get(sid.pool, []):
            return False
        self.discovered[sid.pool] = [s for s in self.discovered[sid.pool] if s != sid.server]
        self.addresses.get(sid.pool, {}).pop(sid.server, None)
        self._stage(DISCOVERED, lambda: discovered_blob(self.discovered, self.addresses))
        return True

    def _stage(self, name: str, produce: Callable[[], dict[str, Any]]) -> None:
        self.journal.stage_blob(name, produce)


def _same(read: Sequence[Member], previous: Mapping[ServerId, Member]) -> bool:
    """True when ``read`` is ``previous``'s members, each the very same object."""
    if len(read) != len(previous):
        return False
    get = previous.get
    return all(get(m.id) is m for m in read)
