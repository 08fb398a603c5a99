"""The agent's servers: the HTTP ``/health`` endpoint and the HAProxy agent-check port.

Both serve the same reading; a load source that fails gives an empty reading, never an error.
Each holds at most ``limits.connections`` connections and closes one idle for
``limits.idle_timeout`` (lbhealthd.serving), so a local user opening connections cannot keep
the daemon's probes or HAProxy's checks from an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from lbhealthd.agent.load import Load, LoadSource
from lbhealthd.agent.reader import DEFAULT_CGROUP_ROOT, SAMPLE_INTERVAL, LoadReader
from lbhealthd.agent.reply import Thresholds, agent_reply
from lbhealthd.agent.window import DEFAULT_WINDOW
from lbhealthd.serving import ConnectionGuard, Limits, Listener, tcp_sockets

DEFAULT_LISTEN = "127.0.0.1:9111"
DEFAULT_AGENT_HOST = "127.0.0.1"
AGENT_TIMEOUT = 1.0  # per agent-check connection: write the reply, discard input, close

log = structlog.get_logger("lbhealthd.agent")  # one logger name for all of the agent's events


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); port 0 lets the kernel pick."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 0-65535")
    return host, int(port_text)


class Agent:
    """The HTTP endpoint and, with ``agent_port``, the HAProxy agent-check server."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        agent_port: int | None = None,
        thresholds: Thresholds | None = None,
        *,
        agent_host: str = DEFAULT_AGENT_HOST,
        source: LoadSource | None = None,
        cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
        sample_interval: float = SAMPLE_INTERVAL,
        window: float = DEFAULT_WINDOW,
        limits: Limits | None = None,
    ) -> None:
        self.http_host, self._http_port = parse_listen(listen)
        if agent_port is not None and not 0 <= agent_port < 65536:
            raise ValueError(f"invalid agent port {agent_port}: must be 0-65535")
        self.agent_host = agent_host
        self._agent_port = agent_port
        self.thresholds = thresholds or Thresholds()
        self._reader: LoadReader | None = None
        self.source: LoadSource
        if source is None:
            self.source = self._reader = LoadReader(cgroup_root, sample_interval, window=window)
        else:
            self.source = source
        self.limits = limits or Limits()
        self._http_guard = ConnectionGuard("agent http", self.limits)
        self._agent_guard = ConnectionGuard("agent-check", self.limits)
        self._runner: web.AppRunner | None = None
        self._listeners: list[Listener] = []
        self._connections: set[asyncio.Task[object]] = set()
        self._last_reply = ""

    @property
    def http_port(self) -> int:
        """The bound HTTP port (the kernel's choice when asked for 0)."""
        return self._http_port

    @property
    def agent_port(self) -> int | None:
        """The bound agent-check port, or None when the agent-check server is off."""
        return self._agent_port

    def load(self) -> Load:
        try:
            return self.source.read()
        except Exception as exc:  # a broken source must not take the endpoints down
            log.warning("load_read_failed", error=repr(exc))
            return Load()

    def reply(self) -> str:
        """The agent-check line for the current load; logged (debug) when it changes."""
        line = agent_reply(self.load(), self.thresholds)
        if line != self._last_reply:
            self._last_reply = line
            log.debug("agent_reply", reply=line.strip())
        return line

    async def start(self) -> None:
        """Bind both servers; on failure nothing is left running."""
        try:
            if self._reader is not None:
                await self._reader.start()
            app = web.Application(middlewares=[self._http_guard.middleware])
            app.router.add_get("/health", self._health)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            assert self._runner.server is not None  # set up above
            self._serve(self._http_guard, self._runner.server, self.http_host, self._http_port)
            self._http_port = int(self._listeners[0].addresses[0][1])
            if self._agent_port is not None:
                self._serve(
                    self._agent_guard, self._agent_protocol, self.agent_host, self._agent_port
                )
                self._agent_port = int(self._listeners[1].addresses[0][1])
        except BaseException:
            await self.close()
            raise

    def _serve(
        self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> None:
        listener = Listener(guard, inner, tcp_sockets(host, port))
        self._listeners.append(listener)
        listener.start()

    def _agent_protocol(self) -> asyncio.Protocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._on_agent)

    async def close(self) -> None:
        """Stop serving, end open agent connections and the sampler."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._http_guard.abort_all()
        self._agent_guard.abort_all()
        if self._reader is not None:
            await self._reader.stop()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        load = self.load()
        body: dict[str, object] = {"status": "ok", **load.as_dict()}
        body["agent"] = agent_reply(load, self.thresholds).strip()
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _on_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            async with asyncio.timeout(AGENT_TIMEOUT):
                writer.write(self.reply().encode("ascii"))
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                while await reader.read(65536):
                    pass  # agent-send text is read and dropped until HAProxy closes
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(AGENT_TIMEOUT):
                    await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)
