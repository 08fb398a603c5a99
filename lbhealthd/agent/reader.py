"""The real load source: this host's load, or its cgroup's when the cgroup sets limits.

CPU is sampled in the background (a share needs two readings) and reported as the mean over
``window`` seconds (``lbhealthd.agent.window``); load average (already a 1-minute average),
memory and the CPU count are read fresh on every ``read``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import structlog

from lbhealthd.agent.cgroup import read_cgroup
from lbhealthd.agent.load import Load, finite
from lbhealthd.agent.window import DEFAULT_WINDOW, Window

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
SAMPLE_INTERVAL = 1.0
FIRST_SAMPLE = 0.25  # the first CPU share after start, so cpu is known early

log = structlog.get_logger("lbhealthd.agent")  # one logger name for all of the agent's events


def _host_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


class LoadReader:
    """Reads the load of this host, or of its cgroup when the cgroup sets limits.

    ``start()`` runs a background task that samples CPU every ``interval`` seconds; ``read()``
    returns the mean of the CPU samples of the last ``window`` seconds (0: the last sample)
    with fresh load average, memory and CPU count.
    """

    def __init__(
        self,
        cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
        interval: float = SAMPLE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.cgroup_root = Path(cgroup_root)
        self.interval = interval
        self._clock = clock
        self._cpu = Window(window)
        self._primed = False
        self._last_usage: tuple[float, int] | None = None
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def _source(self, name: str, get: Callable[[], float]) -> float | None:
        """Call one source; a failure or a non-finite value leaves the field out."""
        try:
            value = finite(get())
        except Exception as exc:  # any source may fail in its own way; the agent keeps going
            if name not in self._failing:
                self._failing.add(name)
                log.warning("load_source_failed", source=name, error=repr(exc))
            return None
        self._failing.discard(name)
        return value

    def sample(self) -> None:
        """Take one CPU sample: the share used since the previous call (the first only primes)."""
        host = self._source("cpu", lambda: psutil.cpu_percent(interval=None) / 100.0)
        cgroup = read_cgroup(self.cgroup_root)
        quota_share = None
        if cgroup.cpus is not None and cgroup.usage_usec is not None:
            now = self._clock()
            previous, self._last_usage = self._last_usage, (now, cgroup.usage_usec)
            if previous is not None and now > previous[0]:
                used = (cgroup.usage_usec - previous[1]) / 1e6
                quota_share = used / (now - previous[0]) / cgroup.cpus
        else:
            self._last_usage = None
        if not self._primed:
            self._primed = True
            return
        cpu = quota_share if quota_share is not None else host
        self._cpu.add(self._clock(), None if cpu is None else min(1.0, max(0.0, cpu)))

    def read(self) -> Load:
        cgroup = read_cgroup(self.cgroup_root)
        host_cpus = self._source("cpus", _host_cpus)
        known = [c for c in (cgroup.cpus, host_cpus) if c is not None]
        load_per_core = self._source("load_per_core", lambda: os.getloadavg()[0] / _host_cpus())
        memory = cgroup.memory
        if memory is None:
            memory = self._source("memory", lambda: psutil.virtual_memory().percent / 100.0)
        return Load(
            cpu=self._cpu.value(self._clock()),
            load_per_core=load_per_core,
            memory=memory,
            cpus=min(known) if known else None,
        )

    async def start(self) -> None:
        """Prime the CPU counters and start sampling in the background."""
        if self._task is not None:
            return
        self.sample()
        self._task = asyncio.create_task(self._run(), name="lbhealthd-agent-sampler")

    async def _run(self) -> None:
        await asyncio.sleep(min(self.interval, FIRST_SAMPLE))
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
