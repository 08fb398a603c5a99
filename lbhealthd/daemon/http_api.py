"""The read-only HTTP listener on ``daemon.http`` (loopback by default).

    GET /metrics   Prometheus exposition of the daemon's own registry (OpenMetrics on request)
    GET /healthz   200 while rounds complete: the last one within max(3 × round_interval, 5 s);
                   503 with a reason before the first round, when rounds stall, and when stopping
    GET /status    the status document (lbhealthd.status), as ``lbhealthd status --json``
    GET /          the same document as an HTML page for a browser (lbhealthd.status_page)

Nothing here changes anything: every other method is answered 405, and state-changing
operations exist only on the control socket. Connections are held within ``daemon.
max_connections`` and ``daemon.idle_timeout`` (lbhealthd.serving.guard), so that local users
opening connections cannot take the descriptors the daemon needs nor keep /healthz from
answering.

The page's headers forbid everything it does not use (scripts, frames, fonts, images, other
origins: ``PAGE_HEADERS``), so that an operator's text that escaped the escaping still could
not run; and ask browsers and proxies not to keep a copy of a page that shows reasons and
names.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from lbhealthd import status, status_page
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.errors import ListenerError
from lbhealthd.report import RoundReport
from lbhealthd.serving import ConnectionGuard, Limits, Listener, tcp_sockets


class Health(Protocol):
    """What the listener reads of a running daemon."""

    @property
    def report(self) -> RoundReport: ...
    @property
    def round_interval(self) -> float: ...
    @property
    def stopping_now(self) -> bool: ...
    def mono(self) -> float: ...
    def wall(self) -> float: ...


log = structlog.get_logger("lbhealthd.http")

MIN_HEALTHY_AGE = 5.0  # seconds: /healthz never asks for rounds closer together than this
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9110`` for IPv6) → (host, port). The config has checked it."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class HttpListener:
    """Serves /metrics, /healthz and /status for a running daemon."""

    def __init__(
        self, daemon: Health, address: str, metrics: Metrics, limits: Limits | None = None
    ) -> None:
        self.daemon = daemon
        self.address = address
        self.metrics = metrics
        self.guard = ConnectionGuard("http", limits or Limits())
        self.runner: web.AppRunner | None = None
        self.listener: Listener | None = None

    @property
    def addresses(self) -> list[Any]:
        """The bound addresses once started (``getsockname()`` of each socket)."""
        return [] if self.listener is None else self.listener.addresses

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return int(self.addresses[0][1]) if self.addresses else None

    async def start(self) -> None:
        """Listen on the address; raise ListenerError naming it if that is impossible."""
        host, port = split_address(self.address)
        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/metrics", self.get_metrics)
        app.router.add_get("/healthz", self.get_healthz)
        app.router.add_get("/status", self.get_status)
        app.router.add_get("/", self.get_page)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        assert runner.server is not None  # set up above
        try:
            sockets = tcp_sockets(host, port)
        except OSError as exc:
            await runner.cleanup()
            raise ListenerError(
                f"cannot listen on {self.address} (daemon.http): {exc.strerror or exc}"
            ) from exc
        self.runner = runner
        self.listener = Listener(self.guard, runner.server, sockets)
        self.listener.start()
        log.info(
            "http_listening",
            address=self.address,
            paths=["/", "/metrics", "/healthz", "/status"],
            max_connections=self.guard.limits.connections,
        )

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.guard.abort_all()

    async def get_metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encode(self.metrics.registry), headers={"Content-Type": content_type}
        )

    async def get_healthz(self, request: web.Request) -> web.Response:
        ok, doc = self.health()
        return web.json_response(doc, status=200 if ok else 503)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the daemon is alive and its rounds complete, and the document saying so."""
        r = self.daemon.report
        limit = max(3 * self.daemon.round_interval, MIN_HEALTHY_AGE)
        age = None if r.finished_at is None else round(self.daemon.mono() - r.finished_at, 3)
        doc: dict[str, Any] = {"ok": False, "last_round_age_s": age, "rounds": r.rounds}
        # Said, but not failed on: the daemon works on with the config it has, and a restart
        # on the refused file would not start at all.
        doc["config_reload_ok"] = r.config is None or r.config.refused is None
        if self.daemon.stopping_now:
            doc["reason"] = "the daemon is stopping"
        elif age is None:
            doc["reason"] = "no round has completed yet"
        elif age > limit:
            doc["reason"] = f"the last round completed {age:.1f}s ago (limit {limit:g}s)"
        else:
            doc["ok"] = True
        return doc["ok"], doc

    async def get_status(self, request: web.Request) -> web.Response:
        d = self.daemon
        return web.json_response(status.document(d.report, d.wall(), d.mono()))

    async def get_page(self, request: web.Request) -> web.Response:
        d = self.daemon
        wall = d.wall()
        page = status_page.render_page(
            status.document(d.report, wall, d.mono()),
            status_page.refresh_seconds(d.round_interval),
            wall,
        )
        return web.Response(
            text=page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )


__all__ = ["HttpListener", "split_address"]
