"""Runs one probe loop per server: every ``interval`` with jitter, starts spread over the
interval so that a large pool is never probed all at once. Keeps each server's newest sample."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lbhealthd.model import Sample, ServerId
from lbhealthd.probes.http import HttpProber


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe for one server and how often."""

    url: str
    interval: float
    timeout: float
    load_fields: Mapping[str, str]


class ProbeScheduler:
    """Keeps a probe loop running for every target given to ``sync``; ``latest`` has results."""

    def __init__(
        self,
        prober: HttpProber,
        clock: Callable[[], float],
        *,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        self._prober = prober
        self._clock = clock
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - spreading probes, not cryptography
        self._tasks: dict[ServerId, tuple[Target, asyncio.Task[None]]] = {}
        self._latest: dict[ServerId, Sample] = {}

    def sync(self, targets: Mapping[ServerId, Target]) -> None:
        """Start loops for new targets, restart changed ones, stop the ones that left."""
        for sid in list(self._tasks):
            target, task = self._tasks[sid]
            if targets.get(sid) != target:
                task.cancel()
                del self._tasks[sid]
                if sid not in targets:
                    self._latest.pop(sid, None)
        for sid, target in targets.items():
            if sid not in self._tasks:
                task = asyncio.create_task(self._loop(sid, target), name=f"probe {sid}")
                self._tasks[sid] = (target, task)

    def latest(self, sid: ServerId) -> Sample | None:
        return self._latest.get(sid)

    @property
    def targets(self) -> int:
        return len(self._tasks)

    async def _loop(self, sid: ServerId, target: Target) -> None:
        # Start at a random phase of the interval, then keep a steady cadence with jitter.
        await asyncio.sleep(self._rng.uniform(0.0, target.interval))
        next_at = self._clock()
        while True:
            self._latest[sid] = await self._prober.probe(
                sid, target.url, target.timeout, target.load_fields, self._clock
            )
            spread = target.interval * self._jitter
            next_at += target.interval + self._rng.uniform(-spread, spread)
            now = self._clock()
            if next_at < now:  # fell behind (a slow probe): do not burst to catch up
                next_at = now
            await asyncio.sleep(next_at - now)

    async def close(self) -> None:
        """Stop every loop and wait for them to end."""
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
