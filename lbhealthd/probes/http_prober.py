"""HTTP health probes on bare asyncio Protocols: one kept-alive connection per target, parsed by
httptools (llhttp, in C). The same contract as ``HttpProber`` (``lbhealthd.probes.aiohttp_prober``),
at a fraction of its cost per probe; the answer is judged by the same functions.

- One deadline bounds the whole probe: connecting (optionally also ``connect_timeout``),
  sending, headers and body. A server trickling bytes cannot stretch it.
- The body cap is enforced while parsing (``lbhealthd.probes.httpparse``): Content-Length,
  chunked and until-close bodies alike stop at ``max_body + 1`` bytes, and the connection is
  dropped rather than drained.
- Connections: at most one idle connection is kept per (host, port) and reused by the next
  probe; a second probe of a target already being probed opens another, closed afterwards
  unless the idle slot is free. A connection the server closed, or answered with
  ``Connection: close``, is dropped. A request sent on a reused connection that the server had
  closed meanwhile (no byte of an answer, then EOF or reset) is retried once on a new
  connection within the same deadline, as aiohttp does for idempotent requests.
- ``http://`` only: an ``https://`` URL is probed by an ``HttpProber`` (aiohttp, TLS) made on
  first use, with identical outcomes; any other scheme is an ERROR sample.
- IP literals (IPv4, and IPv6 in brackets) connect without a resolver; names are resolved by
  the event loop for each new connection.

The event loop is the caller's; ``loop_factory()`` names uvloop's when it is installed (an
optional extra), and the standard loop otherwise.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import cast

from lbhealthd.model import ProbeOutcome, Sample, ServerId
from lbhealthd.probes.aiohttp_prober import HttpProber, describe, failed, to_sample
from lbhealthd.probes.httpparse import (
    Endpoint,
    ResponseReader,
    ServerDisconnectedError,
    endpoint,
)

__all__ = ["FastProber", "loop_factory"]

_MAX_CACHED_URLS = 100_000
_MAX_FREE_READERS = 1024
_Key = tuple[str, int]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if uvloop is installed, else None (the standard loop)."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional extra
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _DeadlineExpired(Exception):
    """The probe's deadline passed while waiting for the answer."""


class _ConnectTimeout(Exception):
    """``connect_timeout`` passed before the connection was made."""


class _Connection(asyncio.Protocol):
    """One TCP connection to one target, carrying one request at a time.

    Between requests it holds only its transport: the response reader (an httptools parser,
    the larger part of a connection's memory) is lent by the pool for one exchange and given
    back only when the answer ended cleanly and the parser stands at the next message.
    """

    __slots__ = ("_answer", "_key", "_pool", "_reader", "_timer", "closed", "transport", "used")

    def __init__(self, pool: _Pool, key: _Key) -> None:
        self._pool = pool
        self._key = key
        self._reader: ResponseReader | None = None
        self._answer: asyncio.Future[tuple[int, str, bytes | None]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0  # requests sent on this connection

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP transport (uvloop's are not asyncio.Transport subclasses, hence no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        answer, reader = self._answer, self._reader
        if answer is None or reader is None or answer.done():
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        try:
            response = reader.feed(data)
        except Exception as exc:
            self._fail(exc)
            return
        if response is None:
            return
        self._end()
        answer.set_result((response.status, response.location, response.body))
        if response.keep_alive and not self.closed:
            self._pool.give_back(reader)
            self._pool.release(self._key, self)
        else:
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._pool.lost(self._key, self)
        answer, reader = self._answer, self._reader
        if answer is None or reader is None or answer.done():
            self._end()
            return
        if isinstance(exc, OSError):  # reset: no EOF to judge the body by
            self._fail(ServerDisconnectedError(describe(exc), idle=not reader.received))
            return
        try:
            response = reader.feed_eof()
        except Exception as error:
            self._fail(error)
            return
        self._end()
        answer.set_result((response.status, response.location, response.body))

    # --- the exchange ----------------------------------------------------------------------

    def send(
        self, request: bytes, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[int, str, bytes | None]]:
        """Send ``request``; the future gets ``(status, location, body)`` or the error."""
        assert self.transport is not None
        self.used += 1
        self._reader = self._pool.lend()
        answer = self._answer = loop.create_future()
        self._timer = loop.call_at(deadline, self._expire)
        self.transport.write(request)
        return answer

    def abort(self) -> None:
        """Drop the connection now, unread bytes and all."""
        self._end()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _expire(self) -> None:
        self._timer = None
        self._fail(_DeadlineExpired())

    def fail(self, exc: BaseException) -> None:
        """End the exchange in progress, if any, with ``exc``, and drop the connection."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        answer = self._answer
        self._end()
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.abort()

    def _end(self) -> None:
        """The exchange is over: stop its timer, forget its future and its reader."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._answer = None
        self._reader = None


class _Pool:
    """The prober's connections (the open ones, to close them all, and one idle connection per
    target) and a free list of response readers, as long as the most exchanges at once."""

    __slots__ = ("_max_body", "_readers", "idle", "open")

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._readers: list[ResponseReader] = []
        self.idle: dict[_Key, _Connection] = {}
        self.open: set[_Connection] = set()

    def lend(self) -> ResponseReader:
        reader = self._readers.pop() if self._readers else ResponseReader(self._max_body)
        reader.start()
        return reader

    def give_back(self, reader: ResponseReader) -> None:
        if len(self._readers) < _MAX_FREE_READERS:
            self._readers.append(reader)

    def opened(self, connection: _Connection) -> None:
        self.open.add(connection)

    def take(self, key: _Key) -> _Connection | None:
        connection = self.idle.pop(key, None)
        if connection is not None and (connection.closed or connection.transport is None):
            return None
        return connection

    def release(self, key: _Key, connection: _Connection) -> None:
        if key in self.idle:
            connection.abort()  # one idle connection per target is enough
        else:
            self.idle[key] = connection

    def lost(self, key: _Key, connection: _Connection) -> None:
        self.open.discard(connection)
        if self.idle.get(key) is connection:
            del self.idle[key]

    def close(self) -> None:
        self.idle.clear()
        self._readers.clear()
        for connection in list(self.open):
            connection.fail(RuntimeError("FastProber is closed"))


class FastProber:
    """Probes health URLs over kept-alive asyncio Protocols; ``close()`` drops its connections.

    Interchangeable with ``HttpProber``: same arguments where they apply, same ``probe``, same
    Samples for every server behaviour.
    """

    def __init__(
        self,
        *,
        max_body: int = 65536,
        user_agent: str = "lbhealthd/0.1",
        connect_timeout: float | None = None,
    ) -> None:
        self._max_body = max_body
        self._user_agent = user_agent
        self._connect_timeout = connect_timeout
        self._pool = _Pool(max_body)
        self._endpoints: dict[str, Endpoint | str] = {}  # URL: endpoint, or why it is unusable
        self._https: HttpProber | None = None
        self._closed = False

    async def __aenter__(self) -> FastProber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop every connection; later probes are refused."""
        self._closed = True
        self._pool.close()
        if self._https is not None:
            await self._https.close()
            self._https = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,  # noqa: ASYNC109 - each pool has its own; it bounds the whole probe
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample:
        """GET ``url`` within ``timeout`` seconds and judge the answer; never raises for a server.

        ``load_fields`` maps signal names to JSON fields (dotted paths reach nested objects);
        ``now`` is a monotonic clock in seconds, read at the start (``Sample.at``) and at the end.
        """
        if self._closed:
            raise RuntimeError("FastProber is closed")
        target = self._endpoints.get(url)
        if target is None:
            target = self._endpoint(url)
        if isinstance(target, str):
            if target == "https":
                return await self._https_prober().probe(server, url, timeout, load_fields, now)
            return failed(server, now(), ProbeOutcome.ERROR, target)
        started = now()
        try:
            loop = asyncio.get_running_loop()
            answer = await self._exchange(loop, target, loop.time() + timeout)
        except (_DeadlineExpired, TimeoutError):
            return failed(server, started, ProbeOutcome.TIMEOUT, f"no answer within {timeout:g}s")
        except _ConnectTimeout:
            detail = f"no connection within {self._connect_timeout:g}s"
            return failed(server, started, ProbeOutcome.TIMEOUT, detail)
        except OSError as exc:
            outcome = ProbeOutcome.REFUSED if _refused(exc) else ProbeOutcome.ERROR
            return failed(server, started, outcome, describe(exc))
        except Exception as exc:
            return failed(server, started, ProbeOutcome.ERROR, describe(exc))
        latency_ms = (now() - started) * 1000.0
        return to_sample(server, started, latency_ms, answer, load_fields, self._max_body)

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, target: Endpoint, deadline: float
    ) -> tuple[int, str, bytes | None]:
        key = (target.host, target.port)
        connection = self._pool.take(key)
        if connection is None:
            connection = await self._connect(loop, key, deadline)
        reused = connection.used > 0
        try:
            return await connection.send(target.request, deadline, loop)
        except ServerDisconnectedError as exc:
            if not (reused and exc.idle):
                raise
        except BaseException:
            connection.abort()
            raise
        # The server closed the kept-alive connection before our request reached it.
        connection = await self._connect(loop, key, deadline)
        try:
            return await connection.send(target.request, deadline, loop)
        except BaseException:
            connection.abort()
            raise

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, key: _Key, deadline: float
    ) -> _Connection:
        connect_by = deadline
        if self._connect_timeout is not None:
            connect_by = min(deadline, loop.time() + self._connect_timeout)
        pool = self._pool
        try:
            async with asyncio.timeout_at(connect_by):
                _, connection = await loop.create_connection(
                    lambda: _Connection(pool, key), key[0], key[1]
                )
        except TimeoutError:
            if connect_by < deadline:
                raise _ConnectTimeout from None
            raise
        if self._closed:
            connection.abort()
            raise RuntimeError("FastProber is closed")
        return connection

    def _endpoint(self, url: str) -> Endpoint | str:
        if len(self._endpoints) >= _MAX_CACHED_URLS:
            self._endpoints.clear()
        target: Endpoint | str
        try:
            target = endpoint(url, self._user_agent)
        except ValueError as exc:
            scheme = url.partition(":")[0].lower()
            target = "https" if scheme == "https" else describe(exc)
        except UnicodeError as exc:
            target = describe(exc)
        self._endpoints[url] = target
        return target

    def _https_prober(self) -> HttpProber:
        if self._https is None:
            self._https = HttpProber(max_body=self._max_body, user_agent=self._user_agent)
        return self._https


def _refused(exc: OSError) -> bool:
    return isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED
