"""Drive HAProxy through its runtime API (the admin ``stats socket``), one or several endpoints.

Wire protocol (``lbhealthd.drivers.haproxy.channel``): one interactive (``prompt``) connection per
endpoint carries a burst of commands, written without waiting for each other's answers and
answered in order; it closes once idle for ``keepalive`` seconds and takes no new command after
``max_age`` seconds, so a reloaded HAProxy is reached on a new connection within that time and
its old process is never kept alive by us. Every command has a deadline of ``timeout`` seconds,
including any reconnect and retry (HAProxy never times out a malformed exchange by itself).
Every name is checked against HAProxy's safe charset before it is put in a command, so ``;``,
newlines, spaces or ``#`` never reach the socket; weights are integers 0..256 and states come
from ``AdminState``.

Errors: socket missing, refused, permission denied, closed or timed out -> ``Unavailable``
(retried a few times with backoff on a new connection, within the deadline; every command sent
is idempotent, so a command that may have run is safe to send again); any text HAProxy answers
to a ``set`` command, or an unexpected reply to a ``show`` command -> ``Rejected`` (never
retried).

Several endpoints form an HA pair: reads merge them (``consistent=False`` on disagreement or
when an endpoint is down, ``partial`` for the servers some endpoints do not list, see
``lbhealthd.drivers.ha_merge``), writes go to every endpoint and fail if any of them failed.
Replies are read by ``lbhealthd.drivers.haproxy.replies``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from lbhealthd.drivers.ha_merge import combined_error, merge_members
from lbhealthd.drivers.haproxy.channel import Channel
from lbhealthd.drivers.haproxy.replies import (
    Known,
    StatRows,
    check_state_reply,
    first_line,
    info_fields,
    pool_members,
    stat_rows,
)
from lbhealthd.errors import DriverError, Rejected, Unavailable
from lbhealthd.model import AdminState, Member, PoolSnapshot, ServerId, check_name

MAX_REPLY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an admin socket listens: a unix path or a TCP host and port."""

    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_socket(text: str) -> Endpoint:
    """Parse ``unix:/ABSOLUTE/PATH`` or ``tcp:HOST:PORT`` (``tcp:[::1]:PORT`` for IPv6)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise ValueError(f"invalid socket {text!r}: expected 'unix:/path' or 'tcp:host:port'")
    if any(c in rest for c in "\0\n\r"):
        raise ValueError(f"invalid socket {text!r}: control characters are not allowed")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"invalid socket {text!r}: the unix socket path must be absolute")
        return Endpoint("unix", path=rest)
    host, sep, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid socket {text!r}: expected 'tcp:host:port'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid socket {text!r}: port must be 1-65535")
    return Endpoint("tcp", host=host, port=int(port_text))


class HAProxyDriver:
    """The Driver for HAProxy's runtime API; ``sockets`` are ``unix:PATH`` or ``tcp:HOST:PORT``."""

    max_in_flight = 256

    def __init__(
        self,
        sockets: Sequence[str],
        timeout: float = 3.0,
        *,
        attempts: int = 3,
        connect_timeout: float | None = None,
        keepalive: float = 0.1,
        max_age: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stats_every: float = 0.0,
    ) -> None:
        if not sockets:
            raise ValueError("at least one HAProxy socket is needed")
        if timeout <= 0 or attempts < 1 or keepalive < 0 or max_age <= 0:
            raise ValueError("timeout and max_age must be > 0, keepalive >= 0, attempts >= 1")
        self.endpoints = [parse_socket(s) for s in sockets]
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout or 1.0, timeout)
        self.attempts = attempts
        self.keepalive = keepalive
        self.max_age = max_age
        self._sleep = sleep
        # The last read of each (endpoint, pool): its unchanged servers keep their Member.
        self._known: dict[tuple[str, str], Known] = {}
        # The counters: read at most about every stats_every (0: every read), by (endpoint,
        # pool): when, from which process (its epoch), and the rows.
        self.stats_every = stats_every
        self._stats: dict[tuple[str, str], tuple[float, str, StatRows]] = {}
        self._counters: dict[str, int] = {}  # per pool, how many fresh reads of the counters
        self._channels: dict[Endpoint, Channel] = {}
        self._opening: dict[Endpoint, asyncio.Task[Channel]] = {}
        # Errors of the endpoints that failed during the last snapshot, by endpoint.
        self.last_errors: dict[str, DriverError] = {}
        # Called on every retry (the daemon counts them in its metrics).
        self.on_retry: Callable[[], None] | None = None
        # Connections opened so far (each carries a burst of commands).
        self.connections = 0

    async def command(self, endpoint: Endpoint, cmd: str) -> str:
        """Send one command (built only from validated parts) and return the reply, with retries."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        line = cmd.encode("ascii") + b"\n"
        try:
            # The common case takes no retry machinery and no extra coroutine: one exchange
            # on the open channel.
            channel = self._channels.get(endpoint)
            if channel is not None and channel.loop is loop and channel.usable(self.max_age):
                data = await channel.ask(line, deadline)
                return data.decode("utf-8", errors="replace")
            return await self._exchange(endpoint, line, deadline)
        except Unavailable as exc:
            if self.attempts == 1 or deadline - loop.time() < 0.02:
                raise
            self._retrying(endpoint, 1, exc)
        await self._sleep(_pause(1, deadline, loop))

        # Attempts 2 and later; tenacity counts from 1, so its attempt n is our n + 1.
        def stop(state: RetryCallState) -> bool:
            return state.attempt_number + 1 >= self.attempts or deadline - loop.time() < 0.02

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._retrying(endpoint, state.attempt_number + 1, exc)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop,
            wait=lambda state: _pause(state.attempt_number + 1, deadline, loop),
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._exchange(endpoint, line, deadline)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retrying(self, endpoint: Endpoint, attempt: int, exc: BaseException | None) -> None:
        structlog.get_logger().debug(
            "driver_retry", endpoint=str(endpoint), attempt=attempt, error=str(exc)
        )
        if self.on_retry is not None:
            self.on_retry()

    async def _exchange(self, endpoint: Endpoint, line: bytes, deadline: float) -> str:
        channel = await self._channel(endpoint, deadline)
        data = await channel.ask(line, deadline)
        return data.decode("utf-8", errors="replace")

    async def _channel(self, endpoint: Endpoint, deadline: float) -> Channel:
        """The endpoint's open channel, or a new one (one opening at a time per endpoint)."""
        loop = asyncio.get_running_loop()
        channel = self._channels.get(endpoint)
        if channel is not None:
            if channel.loop is loop and channel.usable(self.max_age):
                return channel
            del self._channels[endpoint]
            if channel.loop is loop:
                channel.close_when_idle()  # too old: it finishes its answers, then closes
        opening = self._opening.get(endpoint)
        if opening is None or opening.get_loop() is not loop:
            opening = loop.create_task(self._open(endpoint, deadline))
            # Its error reaches every waiter; retrieved here too in case all of them left.
            opening.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._opening[endpoint] = opening
        return await asyncio.shield(opening)

    async def _open(self, endpoint: Endpoint, deadline: float) -> Channel:
        loop = asyncio.get_running_loop()
        try:
            channel = await Channel.open(
                name=str(endpoint),
                unix_path=endpoint.path if endpoint.kind == "unix" else "",
                host=endpoint.host,
                port=endpoint.port,
                connect_by=min(deadline, loop.time() + self.connect_timeout),
                deadline=deadline,
                idle=self.keepalive,
                max_reply=MAX_REPLY,
            )
        finally:
            if self._opening.get(endpoint) is asyncio.current_task():
                del self._opening[endpoint]
        self.connections += 1
        self._channels[endpoint] = channel
        return channel

    async def show_info(self, endpoint: Endpoint) -> dict[str, str]:
        """``show info`` as a dict (``Pid``, ``Uptime_sec``, ``Start_time_sec`` ...)."""
        return info_fields(str(endpoint), await self.command(endpoint, "show info"))

    async def epoch(self, endpoint: Endpoint) -> str:
        """Identifies one HAProxy process: changes when it restarts (runtime state lost)."""
        info = await self.show_info(endpoint)
        return f"{info['Pid']}@{info.get('Start_time_sec', '')}"

    async def _read(self, endpoint: Endpoint, pool: str) -> tuple[str, list[Member], bool]:
        """The endpoint's epoch and members of ``pool``, and whether their counters were read
        now. The states and weights are read every time; the counters (``show stat``: 2.3 MB
        for 10,000 servers) at most about every ``stats_every``, and again whenever the
        HAProxy process changed."""
        key = (str(endpoint), pool)
        cached = self._stats.get(key)
        now = asyncio.get_running_loop().time()
        # A round comes about every round_interval, a little early or late: 10 % of slack
        # keeps counters read as often as rounds from being read only every other round.
        due = cached is None or now - cached[0] >= 0.9 * self.stats_every
        reads = [self.epoch(endpoint), self.command(endpoint, f"show servers state {pool}")]
        if due:
            reads.append(self.command(endpoint, f"show stat {pool} 4 -1"))
        got = await asyncio.gather(*reads)
        epoch, state = got[0], got[1]
        check_state_reply(str(endpoint), state)
        stat: StatRows
        if due:
            stat = stat_rows(str(endpoint), got[2])
        elif cached is not None and epoch == cached[1]:
            stat = cached[2]
        else:  # another process since the counters were read: theirs are gone
            due = True
            stat = stat_rows(str(endpoint), await self.command(endpoint, f"show stat {pool} 4 -1"))
        if due:
            self._stats[key] = (now, epoch, stat)
        known = self._known.setdefault(key, {})
        return epoch, pool_members(pool, str(endpoint), state, stat, known), due

    async def snapshot(self, pool: str) -> PoolSnapshot:
        check_name(pool, "pool name")
        results = await asyncio.gather(
            *(self._read(ep, pool) for ep in self.endpoints), return_exceptions=True
        )
        errors: dict[str, DriverError] = {}
        views: list[list[Member] | None] = []
        epochs = []
        fresh = False
        for ep, result in zip(self.endpoints, results, strict=True):
            if isinstance(result, DriverError):
                errors[str(ep)] = result
                views.append(None)
                epochs.append("-")
            elif isinstance(result, BaseException):
                raise result
            else:
                epochs.append(result[0])
                views.append(result[1])
                fresh = fresh or result[2]
        self.last_errors = errors
        if len(errors) == len(self.endpoints):
            raise combined_error(list(errors.values()), len(self.endpoints), prefer=Rejected)
        members, partial = merge_members(views)
        if fresh:
            self._counters[pool] = self._counters.get(pool, 0) + 1
        return PoolSnapshot(
            pool,
            tuple(members),
            epoch=",".join(epochs),
            partial=partial,
            counters=self._counters.get(pool, 0),
            failed={ep: str(err) for ep, err in errors.items()},
        )

    async def _set(self, server: ServerId, what: str) -> None:
        check_name(server.pool, "pool name")
        check_name(server.server, "server name")
        cmd = f"set server {server.pool}/{server.server} {what}"

        async def one(ep: Endpoint) -> None:
            reply = await self.command(ep, cmd)
            if reply.strip():
                raise Rejected(f"{cmd!r}: {first_line(reply)}", endpoint=str(ep))

        if len(self.endpoints) == 1:  # the common case, without a task per command
            endpoint = self.endpoints[0]
            reply = await self.command(endpoint, cmd)
            if reply.strip():
                raise Rejected(f"{cmd!r}: {first_line(reply)}", endpoint=str(endpoint))
            return
        results = await asyncio.gather(*(one(ep) for ep in self.endpoints), return_exceptions=True)
        errors = []
        for result in results:
            if isinstance(result, DriverError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            raise combined_error(errors, len(self.endpoints), prefer=Unavailable)

    async def set_state(self, server: ServerId, state: AdminState) -> None:
        if not isinstance(state, AdminState):
            raise ValueError(f"invalid state {state!r}: expected an AdminState")
        await self._set(server, f"state {state.value}")

    async def set_weight(self, server: ServerId, weight: int) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
            raise ValueError(f"invalid weight {weight!r}: expected an integer 0..256")
        await self._set(server, f"weight {weight}")

    async def close(self) -> None:
        """Close the connections; commands still in flight fail with ``Unavailable``."""
        opening, self._opening = list(self._opening.values()), {}
        for task in opening:
            task.cancel()
        channels, self._channels = list(self._channels.values()), {}
        loop = asyncio.get_running_loop()
        for channel in channels:
            if channel.loop is loop:
                channel.abort("the driver was closed")
        for channel in channels:
            if channel.loop is loop:
                await channel.wait_lost()
        for task in opening:
            with contextlib.suppress(BaseException):
                await task


_BACKOFF = wait_exponential(multiplier=0.05, max=0.5) + wait_random(0, 0.05)
_BACKOFF_OWNER = AsyncRetrying()  # a RetryCallState needs one; only its attempt count is read


def _pause(attempt: int, deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    """The backoff after failed attempt ``attempt``, never past the deadline."""
    state = RetryCallState(_BACKOFF_OWNER, None, (), {})
    state.attempt_number = attempt
    return max(0.0, min(_BACKOFF(state), deadline - loop.time() - 0.01))
