"""An open-loop load generator: requests start on schedule whatever happens to earlier ones.

A closed-loop client (N users, each waiting for its answer) slows down when the servers do and so
hides an overload; real users keep arriving. Here request ``k`` starts at its scheduled time: the
gaps are ``1 / rate`` (a fixed schedule) under a piecewise-constant rate profile. At most
``max_inflight`` requests are outstanding; a request due beyond that is not sent and counted as
dropped by the generator. Every request is recorded with its start time, latency and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp

ERROR = 0  # no HTTP answer: timeout, connection refused or reset
DROPPED = -1  # never sent: too many requests already outstanding


@dataclass(frozen=True, slots=True)
class Step:
    """From ``start`` seconds on, ``rate`` requests per second."""

    start: float
    rate: float


@dataclass(frozen=True, slots=True)
class Profile:
    """A rate over time: ``steps`` sorted by start, the first at 0; ends at ``end`` seconds."""

    steps: tuple[Step, ...]
    end: float

    def __post_init__(self) -> None:
        starts = [s.start for s in self.steps]
        if not starts or starts[0] != 0 or starts != sorted(starts):
            raise ValueError("steps must start at 0 and be sorted")
        if any(s.rate < 0 for s in self.steps) or self.end <= 0:
            raise ValueError("rates must be >= 0 and the end > 0")

    def rate_at(self, t: float) -> float:
        rate = 0.0
        for step in self.steps:
            if step.start <= t:
                rate = step.rate
        return rate


@dataclass(frozen=True, slots=True)
class Record:
    """One scheduled request: start (seconds since the run began), latency (s), status.

    ``status`` is the HTTP status, ``ERROR`` when no answer came, ``DROPPED`` when not sent.
    """

    t: float
    latency: float
    status: int

    @property
    def failed(self) -> bool:
        return self.status < 200 or self.status >= 500


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def failure_counts(records: Iterable[Record]) -> dict[str, int]:
    """Requests, answered 5xx, errors and dropped among ``records``."""
    counts = {"requests": 0, "5xx": 0, "errors": 0, "dropped": 0}
    for r in records:
        counts["requests"] += 1
        if r.status == DROPPED:
            counts["dropped"] += 1
        elif r.status == ERROR:
            counts["errors"] += 1
        elif r.status >= 500:
            counts["5xx"] += 1
    return counts


class LoadGenerator:
    """Sends GET ``url`` on the ``profile``'s schedule until its end; ``records`` holds results."""

    def __init__(
        self,
        url: str,
        profile: Profile,
        *,
        max_inflight: int = 400,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.profile = profile
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.clock = clock
        self.records: list[Record] = []
        self.inflight = 0
        self.started_at: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    async def run(self, start: float | None = None) -> None:
        """Run the whole profile from ``start`` (clock time; default now), then wait at most
        ``timeout`` for the requests still outstanding."""
        connector = aiohttp.TCPConnector(limit=self.max_inflight, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.started_at = start = self.clock() if start is None else start
            due = 0.0
            try:
                while due < self.profile.end:
                    now = self.clock() - start
                    while due <= now and due < self.profile.end:
                        self._launch(session, due, tasks)
                        rate = self.profile.rate_at(due)
                        due = due + 1.0 / rate if rate > 0 else self._next_step(due)
                    await asyncio.sleep(min(0.05, max(0.0, due - (self.clock() - start))))
                if tasks:
                    await asyncio.wait(tasks, timeout=self.timeout + 1.0)
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)

    def _next_step(self, t: float) -> float:
        later = [s.start for s in self.profile.steps if s.start > t]
        return later[0] if later else self.profile.end

    def _launch(
        self, session: aiohttp.ClientSession, due: float, tasks: set[asyncio.Task[None]]
    ) -> None:
        if self.inflight >= self.max_inflight:
            self.records.append(Record(due, 0.0, DROPPED))
            return
        task = asyncio.create_task(self._one(session, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _one(self, session: aiohttp.ClientSession, due: float) -> None:
        self.inflight += 1
        began = self.clock()
        status = ERROR
        try:
            async with session.get(self.url) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = ERROR
        finally:
            self.inflight -= 1
            self.records.append(Record(due, self.clock() - began, status))
