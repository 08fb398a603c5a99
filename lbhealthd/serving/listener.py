"""Listening sockets that accept one connection at a time, into a ConnectionGuard.

asyncio's own servers accept up to a whole listen queue in one go and log every failed
``accept()`` with a traceback: under a flood, the connections accepted in one burst (only to
be closed again) took the descriptors the daemon needed, and the failures wrote megabytes of
log a minute. Here each listening socket has one task that

- waits while the guard has no room (every open connection is being served), leaving new
  connections in the kernel's listen queue, where they hold no descriptor of ours;
- accepts one connection and hands it to the guard before accepting the next, so a connection
  the guard evicts is closed before another is taken in;
- on a failed ``accept()`` (no descriptor, no memory) waits ``retry`` seconds and logs
  ``accept_failed`` (warning) at most once per interval per listener, with how often it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from lbhealthd.serving.guard import ConnectionGuard
from lbhealthd.serving.throttle import LOG_INTERVAL, Every

__all__ = ["BACKLOG", "Listener", "tcp_sockets", "unix_socket"]

log = structlog.get_logger("lbhealthd.serving")

BACKLOG = 128  # connections the kernel queues while we are not accepting
RETRY = 0.5  # seconds before accepting again after a failed accept()
_PEER_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN}


def tcp_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets on every address ``host`` resolves to (as asyncio would bind)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((i[0], i[4]) for i in infos):
            sockets.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError:
        for s in sockets:
            s.close()
        raise
    return sockets


def unix_socket(path: str) -> socket.socket:
    """A listening unix socket at ``path`` (the caller sets the umask it is born with)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Serves ``inner``'s protocol on ``sockets``, within ``guard``'s limits."""

    def __init__(
        self,
        guard: ConnectionGuard,
        inner: Callable[[], asyncio.Protocol],
        sockets: Sequence[socket.socket],
        *,
        retry: float = RETRY,
        log_interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.factory = guard.factory(inner)
        self.sockets = list(sockets)
        self.retry = retry
        self._pacer = Every(log_interval, clock)
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def addresses(self) -> list[Any]:
        """``getsockname()`` of each listening socket."""
        return [s.getsockname() for s in self.sockets if s.fileno() != -1]

    def start(self) -> None:
        for sock in self.sockets:
            sock.setblocking(False)
            name = f"accept {self.guard.name} {sock.getsockname()}"
            self._tasks.append(asyncio.create_task(self._serve(sock), name=name))

    async def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections stay)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sock in self.sockets:
            sock.close()

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.guard.room()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _PEER_GONE:
                    self._failed(exc)
                    await asyncio.sleep(self.retry)
                continue
            try:
                await loop.connect_accepted_socket(self.factory, conn)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    conn.close()
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self._failures += 1
        if self._pacer.due():
            log.warning(
                "accept_failed",
                listener=self.guard.name,
                error=exc.strerror or str(exc),
                errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                failures=self._failures,
                open=self.guard.open,
                note=f"new connections wait in the listen queue; retrying every {self.retry:g}s",
            )
            self._failures = 0
