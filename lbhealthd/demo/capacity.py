"""API servers with a capacity model, for the demo: a fixed number of request slots, a queue in
front of them and a queue limit past which requests are refused at once.

Model of one server
    - At most ``concurrency`` requests are served at once; each takes ``service_time`` seconds
      (± ``jitter``, uniform). With 4 slots of 50 ms a server carries 80 requests/s.
    - Requests beyond that wait in a FIFO queue: latency climbs by one service time for every
      ``concurrency`` requests ahead.
    - A request that finds ``queue_limit`` requests already waiting gets 503 at once.
    - ``GET /health`` is never queued. It answers ``{"status": "ok", "load": L, "inflight": n,
      "queued": q}`` where ``n`` and ``q`` are the current counts and ``L`` is
      ``(inflight + queued) / concurrency`` averaged over about the last second (exponentially,
      τ = ``load_tau``), the way an OS load average smooths its run queue. 1.0 means every slot
      was busy; above 1 requests were waiting. Without the smoothing a server at 80 % utilisation
      would flicker between 0.75 and 1.0 from one instant to the next.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one server can carry; the defaults carry 80 requests/s."""

    concurrency: int = 4
    service_time: float = 0.050
    jitter: float = 0.005
    queue_limit: int = 16
    load_tau: float = 1.0

    @property
    def rate(self) -> float:
        """Requests per second the server completes when every slot is busy."""
        return self.concurrency / self.service_time


@dataclass(frozen=True, slots=True)
class Served:
    """One API request as the server saw it: when it finished, how long it took, its status."""

    done: float
    latency: float
    status: int


@dataclass
class ApiServer:
    """One API server: the capacity model behind an aiohttp application on 127.0.0.1."""

    name: str
    capacity: Capacity = field(default_factory=Capacity)
    clock: Callable[[], float] = time.monotonic
    seed: int = 0
    port: int = 0
    served: int = 0
    rejected: int = 0
    inflight: int = 0
    queued: int = 0
    log: list[Served] = field(default_factory=list)
    _avg: float = 0.0
    _avg_at: float | None = None
    _slots: asyncio.Semaphore | None = None
    _runner: web.AppRunner | None = None
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - simulated service times, not secrets

    def level(self) -> float:
        """(inflight + queued) / concurrency right now."""
        return (self.inflight + self.queued) / self.capacity.concurrency

    def load(self) -> float:
        """The smoothed level: what ``/health`` reports as ``load``."""
        self._advance()
        return self._avg

    def _advance(self) -> None:
        now = self.clock()
        if self._avg_at is not None and now > self._avg_at:
            decay = math.exp(-(now - self._avg_at) / self.capacity.load_tau)
            self._avg = self.level() + (self._avg - self.level()) * decay
        self._avg_at = now

    def _change(self, inflight: int = 0, queued: int = 0) -> None:
        self._advance()
        self.inflight += inflight
        self.queued += queued

    def p50(self, since: float) -> float | None:
        """Median latency in seconds of the requests finished since ``since``, or None."""
        recent: list[float] = []
        for item in reversed(self.log):
            if item.done < since:
                break
            recent.append(item.latency)
        if not recent:
            return None
        recent.sort()
        return recent[len(recent) // 2]

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "load": round(self.load(), 3),
                "inflight": self.inflight,
                "queued": self.queued,
            }
        )

    async def _api(self, request: web.Request) -> web.Response:
        started = self.clock()
        slots = self._slots
        assert slots is not None, "the server is not started"
        if slots.locked() and self.queued >= self.capacity.queue_limit:
            self.rejected += 1
            self.log.append(Served(self.clock(), self.clock() - started, 503))
            return web.json_response({"error": "overloaded", "server": self.name}, status=503)
        self._change(queued=1)
        try:
            await slots.acquire()
        finally:
            self._change(queued=-1)
        self._change(inflight=1)
        try:
            cap = self.capacity
            await asyncio.sleep(max(0.0, cap.service_time + self._rng.uniform(-1, 1) * cap.jitter))
        finally:
            self._change(inflight=-1)
            slots.release()
        self.served += 1
        self.log.append(Served(self.clock(), self.clock() - started, 200))
        return web.json_response({"server": self.name, "path": request.path})

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1 (``port`` tells which)."""
        self._slots = asyncio.Semaphore(self.capacity.concurrency)
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._api)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class Fleet:
    """N servers named ``s1``..``sN`` with the same capacity."""

    def __init__(
        self, count: int, capacity: Capacity | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        cap = capacity or Capacity()
        self.servers = [
            ApiServer(f"s{i + 1}", cap, clock or time.monotonic, seed=i + 1) for i in range(count)
        ]

    def __iter__(self) -> Iterator[ApiServer]:
        return iter(self.servers)

    async def start(self) -> None:
        try:
            for server in self.servers:
                await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
