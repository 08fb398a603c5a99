"""Fixtures that run real processes on 127.0.0.1: API servers (aiohttp) and HAProxy.

``api_servers`` are N web servers whose ``/health`` answer a test controls; ``haproxy`` is a
HAProxy child process with backend ``api`` (s1..s5 on those servers, weight 100) behind a
frontend; ``haproxy_factory`` starts more, with custom backends. Every process is stopped by
PID at teardown. Tests skip only when the haproxy binary is not installed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerLike, ServerSpec, find_haproxy
from lbhealthd.drivers.haproxy.process import free_port as _free_port

API_SERVERS = 5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


@dataclass
class Health:
    """What one API server answers on ``/health``; ``body`` replaces the JSON when set."""

    cpu: float = 0.1
    inflight: int = 0
    status: int = 200
    delay: float = 0.0
    body: str | None = None


@dataclass
class ApiServers:
    """N web servers on loopback. Index ``i`` is 0-based: server ``s{i+1}`` in HAProxy."""

    ports: list[int] = field(default_factory=list)
    health: list[Health] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)  # requests to paths other than /health
    runners: list[web.AppRunner] = field(default_factory=list)

    def set(
        self,
        i: int,
        *,
        cpu: float | None = None,
        inflight: int | None = None,
        status: int | None = None,
        delay: float | None = None,
        body: str | None = None,
    ) -> None:
        """Change what server ``i`` answers on ``/health`` from now on."""
        h = self.health[i]
        h.cpu = h.cpu if cpu is None else cpu
        h.inflight = h.inflight if inflight is None else inflight
        h.status = h.status if status is None else status
        h.delay = h.delay if delay is None else delay
        h.body = body

    def url(self, i: int, path: str = "/health") -> str:
        return f"http://127.0.0.1:{self.ports[i]}{path}"

    async def start(self, n: int) -> None:
        for i in range(n):
            self.health.append(Health())
            self.hits.append(0)
            app = web.Application()
            app.router.add_get("/health", self._health_handler(i))
            app.router.add_get("/{tail:.*}", self._page_handler(i))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self.runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.ports.append(int(runner.addresses[0][1]))

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()

    def _health_handler(self, i: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def health(request: web.Request) -> web.Response:
            h = self.health[i]
            if h.delay:
                await asyncio.sleep(h.delay)
            if h.body is not None:
                return web.Response(status=h.status, text=h.body)
            payload = {
                "status": "ok" if h.status == 200 else "fail",
                "cpu": h.cpu,
                "inflight": h.inflight,
                "port": self.ports[i],
            }
            return web.Response(
                status=h.status, text=json.dumps(payload), content_type="application/json"
            )

        return health

    def _page_handler(self, i: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def page(request: web.Request) -> web.Response:
            self.hits[i] += 1
            return web.json_response({"server": i, "port": self.ports[i], "path": request.path})

        return page


@dataclass
class HAProxyHandle:
    """A running HAProxy: its admin sockets in driver notation, frontend port and process."""

    proc: HAProxyProcess
    socket: str
    tcp_socket: str | None
    frontend_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"


HAProxyFactory = Callable[..., Awaitable[HAProxyHandle]]


def _require_haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    return binary


@pytest.fixture
async def api_servers() -> AsyncIterator[ApiServers]:
    """Five aiohttp servers on 127.0.0.1 whose /health answer the test controls."""
    servers = ApiServers()
    try:
        await servers.start(API_SERVERS)
        yield servers
    finally:
        await servers.stop()


@pytest.fixture
async def haproxy_factory(tmp_path: Path) -> AsyncIterator[HAProxyFactory]:
    """Start HAProxy processes with custom backends; all are stopped at teardown."""
    binary = _require_haproxy()
    started: list[HAProxyProcess] = []

    async def start(
        backends: Mapping[str, Sequence[ServerLike]],
        *,
        backend_options: Mapping[str, Sequence[str]] | None = None,
        tcp: bool = True,
    ) -> HAProxyHandle:
        workdir = tmp_path / f"haproxy{len(started)}"
        for attempt in range(3):
            proc = HAProxyProcess(
                workdir,
                backends,
                tcp_socket_port=free_port() if tcp else None,
                backend_options=backend_options,
                binary=binary,
            )
            try:
                await proc.start()
                break
            except RuntimeError as exc:
                # A port that was free a moment ago can be taken by another process before
                # HAProxy binds it: try again on new ones.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
        started.append(proc)
        return HAProxyHandle(proc, proc.socket, proc.tcp_socket, proc.frontend_port)

    try:
        yield start
    finally:
        for proc in started:
            await proc.stop()


def api_backend(api_servers: ApiServers, weight: int = 100, extra: str = "") -> list[ServerSpec]:
    """Servers s1..sN of backend ``api``, one per API server."""
    return [
        ServerSpec(f"s{i + 1}", "127.0.0.1", port, weight, extra)
        for i, port in enumerate(api_servers.ports)
    ]


@pytest.fixture
async def haproxy(api_servers: ApiServers, haproxy_factory: HAProxyFactory) -> HAProxyHandle:
    """HAProxy with backend ``api``: s1..s5 on the API servers, weight 100, no checks."""
    return await haproxy_factory({"api": api_backend(api_servers)})
