"""Connection limits for one listener: a cap on open connections and an idle timeout.

Theory of operation. A listener's protocol factory is wrapped by :meth:`ConnectionGuard.factory`,
so the guard sees every connection open and close; for an aiohttp application its
:meth:`~ConnectionGuard.middleware` also tells it while a request is being served. A connection
is *idle* when it is not being served: it never sent a request, is still sending its headers,
or is kept alive after an answer.

- At most ``limits.connections`` connections are open at once. One more takes the place of the
  connection idle the longest, which is aborted; when every open connection is being served,
  the newcomer is aborted at once. So a flood of idle connections holds at most ``connections``
  descriptors and cannot keep a real request out: the newest connection is the last to go.
- A connection idle for ``limits.idle_timeout`` is aborted (whatever it has not read is
  dropped: a client that stops reading cannot hold the descriptor either).
- Evictions and refusals are logged as ``connections_limited`` (warning), at most once per
  interval per listener, with the counts since the last line; idle timeouts alone are routine
  (a keep-alive client that went quiet) and are only counted in that line.

Nothing here reads a request: the guard works for any protocol (the agent-check server has no
requests, so its connections count as idle from the start and its own timeout ends them first).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import structlog
from aiohttp import web

from lbhealthd.serving.throttle import LOG_INTERVAL, Every

__all__ = ["ConnectionGuard", "Limits"]

log = structlog.get_logger("lbhealthd.serving")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per listener: how many connections may be open, and how long one may sit idle."""

    connections: int = 64
    idle_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.connections < 1 or not self.idle_timeout > 0:
            raise ValueError(f"invalid connection limits {self}")


class ConnectionGuard:
    """Holds one listener's connections within its :class:`Limits`."""

    def __init__(
        self,
        name: str,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.name = name
        self.limits = limits
        self.clock = clock
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._serving = 0  # open connections with a request being served
        self._room = asyncio.Event()
        self._room.set()
        self._pacer = Every(log_interval, clock)
        self.evicted = 0  # since the last connections_limited line
        self.refused = 0
        self.idle_closed = 0
        #: Since the start, by why: ``evicted``, ``refused``, ``idle_closed`` (for metrics).
        self.totals = {"evicted": 0, "refused": 0, "idle_closed": 0}

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def full(self) -> bool:
        """Whether a new connection must wait: the cap is reached and every one is served."""
        return not self._room.is_set()

    async def room(self) -> None:
        """Return once one more connection could be admitted (some connection is idle, or
        fewer than the limit are open)."""
        await self._room.wait()

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for the listener: ``inner``'s protocols, within the limits."""
        return lambda: _Connection(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection as being served while the request is handled."""
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.begin()
        try:
            return await handler(request)
        finally:
            conn.end()

    def abort_all(self) -> None:
        """Abort every connection still open (the listener is closing)."""
        for conn in list(self._open.values()):
            conn.abort()

    def _admit(self, conn: _Connection, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.limits.connections:
            idle = [c for c in self._open.values() if c.serving == 0]
            if not idle:
                self.refused += 1
                self.totals["refused"] += 1
                self._report()
                return False
            victim = min(idle, key=lambda c: c.idle_since)
            self._forget(victim)
            victim.abort()
            self.evicted += 1
            self.totals["evicted"] += 1
            self._report()
        self._open[transport] = conn
        conn.admitted = True
        self._update_room()
        return True

    def _forget(self, conn: _Connection) -> None:
        if conn.admitted and conn.transport is not None:
            conn.admitted = False
            del self._open[conn.transport]
            if conn.serving:
                self._serving -= 1
            self._update_room()

    def _serving_changed(self, delta: int) -> None:
        self._serving += delta
        self._update_room()

    def _update_room(self) -> None:
        if len(self._open) < self.limits.connections or self._serving < len(self._open):
            self._room.set()
        else:
            self._room.clear()

    def _timed_out(self, conn: _Connection) -> None:
        self._forget(conn)
        conn.abort()
        self.idle_closed += 1
        self.totals["idle_closed"] += 1

    def _report(self) -> None:
        if not self._pacer.due():
            return
        log.warning(
            "connections_limited",
            listener=self.name,
            open=len(self._open),
            limit=self.limits.connections,
            evicted=self.evicted,
            refused=self.refused,
            idle_closed=self.idle_closed,
            note="more connections than the limit: the longest idle ones were closed",
        )
        self.evicted = self.refused = self.idle_closed = 0


class _Connection(asyncio.Protocol):
    """One connection of a guarded listener: the listener's own protocol inside, made only
    once the connection is admitted."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.admitted = False  # counted by the guard (until it closes or evicts it)
        self.serving = 0  # requests being served now
        self.idle_since = guard.clock()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's
        if not self.guard._admit(self, transport):
            self.transport.abort()
            return
        self.inner = self.make()
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard._forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def begin(self) -> None:
        self.serving += 1
        self._disarm()
        if self.serving == 1 and self.admitted:
            self.guard._serving_changed(+1)

    def end(self) -> None:
        self.serving -= 1
        if self.serving == 0:
            self.idle_since = self.guard.clock()
            if self.admitted:
                self.guard._serving_changed(-1)
                self._arm()

    def abort(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.limits.idle_timeout, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.serving == 0:
            self.guard._timed_out(self)
