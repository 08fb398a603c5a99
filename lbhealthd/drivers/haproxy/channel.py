"""One connection to HAProxy's runtime API in interactive (``prompt``) mode, commands pipelined.

Framing, as HAProxy 2.6 answers in prompt mode: the first line sent is ``prompt``, answered by
``\\n> ``; from then on every command's answer is its text followed by ``\\n> ``. The text is the
same as on a one-shot connection (``\\n`` for a successful ``set``, ``No such server.\\n\\n``,
the ``show`` tables ending in an empty line). Commands are written as soon as they are asked
for, without waiting for the previous answer; answers come back in order, so the n-th answer
belongs to the n-th command still waiting (a FIFO).

Why the connection is short-lived: a connection held to an HAProxy that is being reloaded keeps
talking to the *old* process, and keeps that process from finishing its soft stop for as long
as commands keep arriving (checked on 2.6 with ``-sf``: the old process answered ``show info``
with its own PID after the new one had taken the socket, and exited only when the connection
closed). So a channel serves one burst of commands: it closes once it has been idle for
``idle`` seconds, and takes no new command after ``max_age`` seconds (the next command opens a
new channel; the old one closes when its last answer is in).

Deadlines: every command carries its own. When one passes before its answer came, the position
in the answer stream is unknown: the channel is dropped and every command still waiting on it
fails with ``Unavailable`` (the driver retries them on a new channel within their deadlines;
all of lbhealthd's commands are idempotent). An EOF or a reset does the same. An answer larger
than ``max_reply`` bytes drops the channel too.
"""

from __future__ import annotations

import asyncio
import collections
import errno
from typing import cast

from lbhealthd.errors import Unavailable

__all__ = ["Channel", "describe_os_error"]

_PROMPT = b"\n> "


def describe_os_error(exc: OSError) -> str:
    """A short reason for a socket error, naming the errno an on-call engineer greps for."""
    if exc.errno == errno.ENOENT:
        return "socket missing (ENOENT)"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused (ECONNREFUSED)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (EACCES)"
    if exc.errno == errno.ECONNRESET:
        return "connection reset (ECONNRESET)"
    if exc.errno == errno.EPIPE:
        return "connection closed by HAProxy (EPIPE)"
    return f"{type(exc).__name__}: {exc}"


class Channel(asyncio.Protocol):
    """A prompt-mode connection carrying any number of commands in flight, answered in order.

    Use ``await Channel.open(...)``, then ``ask(line, deadline)`` from any number of tasks.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, max_reply: int) -> None:
        self.name = name  # the endpoint, for errors
        self.loop = loop
        self.max_reply = max_reply
        self.opened_at = loop.time()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.sent = 0  # commands written (the prompt handshake not counted)
        self._buffer = bytearray()
        self._out: list[bytes] = []  # lines waiting for the end of this turn of the loop
        self._scanned = 0  # bytes of the buffer already searched for the prompt
        self._waiting: collections.deque[tuple[asyncio.Future[bytes], float]] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = float("inf")  # when the deadline timer fires
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle = 0.0
        self._lost: asyncio.Future[None] = loop.create_future()

    # --- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        *,
        name: str,
        unix_path: str = "",
        host: str = "",
        port: int = 0,
        connect_by: float,
        deadline: float,
        idle: float,
        max_reply: int,
    ) -> Channel:
        """Connect (by ``connect_by``), switch to prompt mode (by ``deadline``) and return."""
        loop = asyncio.get_running_loop()
        phase = "connecting"
        channel: Channel | None = None
        try:
            async with asyncio.timeout_at(connect_by):
                if unix_path:
                    _, proto = await loop.create_unix_connection(
                        lambda: cls(name, loop, max_reply), unix_path
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: cls(name, loop, max_reply), host, port
                    )
            channel = proto
            channel._idle = idle
            phase = "waiting for the prompt"
            answer = channel._submit(b"prompt\n", deadline, count=False)
            reply = await answer
        except TimeoutError as exc:
            if channel is not None:
                channel.abort(f"timed out {phase}")
            raise Unavailable(f"timed out {phase}", endpoint=name) from exc
        except OSError as exc:
            raise Unavailable(describe_os_error(exc), endpoint=name) from exc
        except Unavailable:
            raise  # the channel dropped itself (deadline, EOF) and says why
        except BaseException:
            if channel is not None:
                channel.abort("opening was cancelled")
            raise
        if reply.strip():
            channel.abort("not a prompt")
            text = reply.decode("utf-8", "replace").strip().splitlines()[0][:200]
            raise Unavailable(f"no prompt: HAProxy answered {text!r}", endpoint=name)
        return channel

    def usable(self, max_age: float) -> bool:
        """Open and young enough to take another command."""
        return (
            not self.closed
            and self.transport is not None
            and self.loop.time() - self.opened_at < max_age
        )

    def abort(self, why: str) -> None:
        """Drop the connection now; every command still waiting fails with ``Unavailable``."""
        self._fail_all(why)
        self.closed = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()

    def close_when_idle(self) -> None:
        """Take no more commands; close once the ones in flight are answered."""
        self.closed = True
        if not self._waiting and self.transport is not None:
            self._cancel_timers()
            self.transport.close()

    async def wait_lost(self) -> None:
        """Until the connection is gone."""
        await asyncio.shield(self._lost)

    # --- commands --------------------------------------------------------------------------

    def ask(self, line: bytes, deadline: float) -> asyncio.Future[bytes]:
        """Send one command line (ending in ``\\n``); the future gets its answer without the
        prompt, or ``Unavailable``.

        A caller that stops waiting (cancelled) leaves its place in the queue: its answer, when
        it comes, is read and dropped, so the answers after it still reach their own commands.
        """
        if self.closed or self.transport is None:
            raise Unavailable("connection closed before the command was sent", endpoint=self.name)
        return self._submit(line, deadline)

    def _submit(self, line: bytes, deadline: float, *, count: bool = True) -> asyncio.Future[bytes]:
        assert self.transport is not None
        answer: asyncio.Future[bytes] = self.loop.create_future()
        self._waiting.append((answer, deadline))
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if deadline < self._deadline_at:
            self._watch_deadline(deadline)
        if count:
            self.sent += 1
        # Lines asked for in the same turn of the event loop leave in one write.
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(line)
        return answer

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and out:
            self.transport.write(b"".join(out))

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            at = buffer.find(_PROMPT, max(0, self._scanned - 2))
            if at < 0:
                self._scanned = len(buffer)
                if len(buffer) > self.max_reply:
                    self.abort(f"reply larger than {self.max_reply} bytes")
                return
            reply = bytes(buffer[: at + 1])
            del buffer[: at + len(_PROMPT)]
            self._scanned = 0
            if not self._waiting:
                self.abort("an answer nobody asked for: out of step")
                return
            answer, _ = self._waiting.popleft()
            if not answer.done():
                answer.set_result(reply)
            self._rearm()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._cancel_timers()
        if isinstance(exc, OSError):
            why = describe_os_error(exc)
        else:
            why = "connection closed before a complete reply"
        self._fail_all(why)
        if not self._lost.done():
            self._lost.set_result(None)

    # --- timers ----------------------------------------------------------------------------

    def _rearm(self) -> None:
        """After an answer: with nothing left in flight, start the idle clock (or close)."""
        if self._waiting:
            return  # the deadline timer stays: it fires no later than the earliest deadline
        self._cancel_timers()
        if self.closed:
            if self.transport is not None:
                self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(self._idle, self.close_when_idle)

    def _watch_deadline(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self.loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        """Drop the channel if any command in flight is past its deadline, else watch the
        earliest one (the timer may have been set for a command answered since)."""
        self._deadline_timer = None
        self._deadline_at = float("inf")
        if not self._waiting:
            return
        earliest = min(deadline for _, deadline in self._waiting)
        if earliest <= self.loop.time():
            self.abort("timed out waiting for the " + ("reply" if self.sent else "prompt"))
        else:
            self._watch_deadline(earliest)

    def _cancel_timers(self) -> None:
        for timer in (self._deadline_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._deadline_timer = self._idle_timer = None
        self._deadline_at = float("inf")

    def _fail_all(self, why: str) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        for answer, _ in waiting:
            if not answer.done():
                answer.set_exception(Unavailable(why, endpoint=self.name))
