"""The control API: JSON over HTTP on the unix socket ``daemon.control_socket``.

State-changing operations exist only here (never on the TCP listener). The socket is created
with mode 0660 in a directory of mode 0750, so only its owner and group can connect. Each
request is checked again with the caller's credentials as the socket gives them (uid, primary
and supplementary groups: lbhealthd.peercred), never from /proc, which ``ProtectProc=invisible``
hides; the caller's identity is recorded with every override. Where the socket file goes is
checked first (lbhealthd.daemon.socket_file).

    GET  /status                          the status document (lbhealthd.status)
    POST /drain   {server, reason, for_s, force, maint}
    POST /restore {server, for_s, reason}
    POST /forget  {server, reason, force}   (lbhealthd.daemon.memory_requests)
    POST /accept  {pool, reason}
    POST /reload  {path}                  reload the config file at the next round and answer
                                          with the outcome: what changed, or why it was refused

The answer to a drain or restore says what the round it started made of the server: its
state, the warnings the caller must see (a forced drain leaving the pool beyond its caps) and,
for a restore, the server's entry of the status document (its verdict, streaks, ``fall``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from lbhealthd import overrides, status
from lbhealthd.config import Config
from lbhealthd.daemon import memory_requests
from lbhealthd.daemon.socket_file import prepare
from lbhealthd.errors import (
    CapRefused,
    DriverError,
    InvalidDuration,
    InvalidName,
    LbhealthdError,
    StillListed,
    UnknownServer,
)
from lbhealthd.model import Member, ServerId
from lbhealthd.peercred import Peer, allowed, describe, peer_of
from lbhealthd.report import Reload, RoundReport
from lbhealthd.serving import ConnectionGuard, Limits, Listener, unix_socket
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter

if TYPE_CHECKING:
    from lbhealthd.daemon.reconciler import Reconciler

log = structlog.get_logger("lbhealthd.daemon.control")


class Operations(Protocol):
    """What the control API needs of a running daemon."""

    @property
    def config(self) -> Config: ...
    @property
    def report(self) -> RoundReport: ...
    @property
    def store(self) -> Store: ...
    @property
    def writer(self) -> LbWriter: ...
    @property
    def config_path(self) -> str | None: ...
    @property
    def reconciler(self) -> Reconciler: ...
    async def next_round(self) -> bool: ...
    async def request_reload(self, within: float) -> Reload | None: ...


SOCKET_MODE = 0o660
RELOAD_WAIT = 10.0  # seconds for a round to start and reload; under the client's 15 s


def peer(request: web.Request) -> Peer | None:
    """The process at the other end of the unix socket, as the kernel saw it at connect."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return None if sock is None else peer_of(sock)


def _who(request: web.Request) -> str:
    who = peer(request)
    return "unknown" if who is None else describe(who.pid, who.uid)


class ControlServer:
    """Serves the control API for a running daemon."""

    def __init__(self, daemon: Operations, path: str, limits: Limits | None = None) -> None:
        self.daemon = daemon
        self.path = path
        self.guard = ConnectionGuard("control", limits or Limits())
        self.runner: web.AppRunner | None = None
        self.listener: Listener | None = None
        self._gid = os.getgid()
        self._drains = asyncio.Lock()

    @property
    def addresses(self) -> list[Any]:
        """The socket's path once listening."""
        return [] if self.listener is None else self.listener.addresses

    async def start(self) -> None:
        prepare(self.path)
        app = web.Application(middlewares=[self.guard.middleware, self._errors, self._authorize])
        app.router.add_get("/status", self.get_status)
        app.router.add_post("/drain", self.post_drain)
        app.router.add_post("/restore", self.post_restore)
        app.router.add_post("/reload", self.post_reload)
        app.router.add_post("/forget", self.post_forget)
        app.router.add_post("/accept", self.post_accept)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        assert self.runner.server is not None  # set up above
        old = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            sock = unix_socket(self.path)
        finally:
            os.umask(old)
        self.listener = Listener(self.guard, self.runner.server, [sock])
        self.listener.start()
        os.chmod(self.path, SOCKET_MODE)
        self._gid = os.stat(self.path).st_gid
        log.info(
            "control_listening",
            socket=self.path,
            mode=oct(SOCKET_MODE),
            max_connections=self.guard.limits.connections,
        )

    async def close(self) -> None:
        if self.runner is None:
            return  # never started: the socket, if any, belongs to someone else
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        await self.runner.cleanup()
        self.runner = None
        self.guard.abort_all()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @web.middleware
    async def _errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """lbhealthd's own errors (a corrupt state file, the LB refusing) as JSON answers."""
        try:
            return await handler(request)
        except InvalidDuration as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except LbhealthdError as exc:
            log.error("control_request_failed", path=request.path, error=str(exc))
            return web.json_response({"error": str(exc)}, status=500)

    @web.middleware
    async def _authorize(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        who = peer(request)
        try:
            mode: int | None = os.stat(self.path).st_mode
        except OSError:
            mode = None
        if who is None or not allowed(who, os.geteuid(), self._gid, mode):
            shown = "unknown" if who is None else describe(who.pid, who.uid)
            log.warning("control_refused", peer=shown, path=request.path)
            return web.json_response({"error": "permission denied"}, status=403)
        return await handler(request)

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(status.document(self.daemon.report, time.time(), time.monotonic()))

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], ServerId]:
        body = await self._object(request)
        try:
            return body, ServerId.parse(str(body.get("server", "")))
        except InvalidName as exc:
            raise web.HTTPBadRequest(
                text=_json({"error": str(exc)}), content_type="application/json"
            ) from None

    async def _object(self, request: web.Request) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.guard.limits.idle_timeout):
                body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            return body
        except TimeoutError:
            raise web.HTTPRequestTimeout(
                text=_json({"error": "the request body did not arrive in time"}),
                content_type="application/json",
            ) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text=_json({"error": str(exc)}), content_type="application/json"
            ) from None

    def _members(self, sid: ServerId) -> Mapping[ServerId, Member]:
        pool = self.daemon.report.pool(sid.pool)
        members = pool.members if pool is not None else {}
        try:
            overrides.find_member(self.daemon.config, sid, members)
        except UnknownServer as exc:
            raise web.HTTPNotFound(
                text=_json({"error": str(exc)}), content_type="application/json"
            ) from None
        return members

    async def post_drain(self, request: web.Request) -> web.Response:
        body, sid = await self._body(request)
        reason = str(body.get("reason") or "").strip()
        if not reason:
            return web.json_response({"error": "a reason is required"}, status=400)
        members = self._members(sid)
        d = self.daemon
        try:
            async with self._drains:  # one check-and-record at a time, whatever is awaited
                done = await overrides.drain(
                    d.config,
                    d.store,
                    d.writer,
                    members,
                    sid,
                    reason=reason,
                    who=_who(request),
                    now=time.time(),
                    for_s=overrides.seconds(body.get("for_s")),
                    force=bool(body.get("force")),
                    maint=bool(body.get("maint")),
                    apply=False,
                )
        except CapRefused as exc:
            return web.json_response({"error": str(exc)}, status=409)
        await d.next_round()
        return web.json_response(self._result(sid, "drained", done))

    async def post_restore(self, request: web.Request) -> web.Response:
        body, sid = await self._body(request)
        members = self._members(sid)
        d = self.daemon
        done = await overrides.restore(
            d.config,
            d.store,
            d.writer,
            members,
            sid,
            who=_who(request),
            now=time.time(),
            for_s=overrides.seconds(body.get("for_s")),
            reason=str(body.get("reason") or "").strip(),
            apply=False,
        )
        if done.lb_error is not None:
            return web.json_response({"error": done.lb_error}, status=502)
        await d.next_round()
        result = self._result(sid, "restored", done)
        result["kept_in"] = done.override is not None
        result["status"] = status.server(d.report, sid, time.time(), time.monotonic())
        return web.json_response(result)

    async def post_reload(self, request: web.Request) -> web.Response:
        """Reload the config file the daemon was started with; ``path``, when given, must name
        that same file (the one the caller checked)."""
        body = await self._object(request)
        d, asked = self.daemon, body.get("path")
        mine = d.config_path
        if mine is None:
            error = "this daemon was not started from a config file: nothing to reload"
            return web.json_response({"error": error}, status=409)
        if asked is not None and not _same_file(str(asked), mine):
            error = f"the daemon reads {mine}, not {asked}: nothing was reloaded"
            return web.json_response({"error": error}, status=400)
        log.info("config_reload_requested", who=_who(request), path=mine)
        outcome = await d.request_reload(RELOAD_WAIT)
        if outcome is None:
            error = (
                f"no round started within {RELOAD_WAIT:g}s to reload in; the reload stays "
                "asked for: see `lbhealthd status` for its outcome"
            )
            return web.json_response({"error": error}, status=503)
        doc: dict[str, Any] = {
            "result": "reloaded" if outcome.ok else "refused",
            "path": mine,
            "at": outcome.at,
            "changed": list(outcome.changed),
            "problems": list(outcome.problems),
        }
        if not outcome.ok:
            config = d.report.config
            doc["error"] = status.reload_alert(outcome, config.loaded_at if config else None)
        return web.json_response(doc, status=200 if outcome.ok else 422)

    # -- an operator's changes to the daemon's memory ---------------------------------------

    async def post_forget(self, request: web.Request) -> web.Response:
        body, sid = await self._body(request)
        reason = str(body.get("reason") or "").strip() or "(none given)"
        force = bool(body.get("force"))
        r = self.daemon.reconciler
        who = _who(request)
        done = memory_requests.submit(r, lambda: memory_requests.forget(r, sid, who, reason, force))
        return await self._answer(done)

    async def post_accept(self, request: web.Request) -> web.Response:
        body = await self._object(request)
        pool = str(body.get("pool") or "")
        reason = str(body.get("reason") or "").strip() or "(none given)"
        r = self.daemon.reconciler
        who = _who(request)
        done = memory_requests.submit(r, lambda: memory_requests.accept(r, pool, who, reason))
        return await self._answer(done)

    async def _answer(self, done: asyncio.Future[dict[str, Any]]) -> web.Response:
        """The answer of a change queued for the next round, started now and waited for."""
        await self.daemon.next_round()
        if not done.done():
            error = "queued, but no round ran in time: it is made at the next round"
            return web.json_response({"error": error}, status=504)
        try:
            return web.json_response(done.result())
        except StillListed as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except UnknownServer as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except DriverError as exc:
            return web.json_response({"error": str(exc)}, status=502)

    def _result(self, sid: ServerId, what: str, done: overrides.Done) -> dict[str, Any]:
        report = self.daemon.report
        member = report.member(sid)
        pool = report.pool(sid.pool)
        lb_error = pool.lb_error if pool is not None else None
        want = report.desired.get(sid)
        applied = (
            want is not None
            and lb_error is None
            and (
                (member is not None and member.admin is want.admin and member.consistent)
                or report.applied.get(sid) is want.admin
            )
        )
        return {
            "result": what,
            "server": str(sid),
            "path": "daemon",
            "applied": applied,
            "lb_error": lb_error,
            "lb_state": member.admin.value if member else None,
            "until": done.override.expires_at if done.override else None,
            "notes": list(done.notes),
            "warnings": list(done.warnings),
        }


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (by device and inode: links and mounts agree)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc)
