"""The control API: JSON over HTTP on the unix socket ``daemon.control_socket``.

State-changing operations exist only here (never on the TCP listener). The socket is created
with mode 0660 in a directory of mode 0750, so only its owner and group can connect; the
caller's identity comes from the socket's peer credentials (SO_PEERCRED) and is recorded with
every override. A stale socket file left by a crash is replaced; a live one means another
daemon is running, and this one refuses to start.

    GET  /status                          the status document (lbhealthd.status)
    POST /drain   {server, reason, for_s, force, maint}
    POST /restore {server, for_s}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from lbhealthd import status
from lbhealthd.errors import (
    CapRefused,
    ControlError,
    DriverError,
    InvalidName,
    LbhealthdError,
    UnknownServer,
)
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from lbhealthd.overrides import check_caps, find_member, in_rotation

if TYPE_CHECKING:
    from lbhealthd.daemon.loop import Daemon

log = structlog.get_logger("lbhealthd.daemon.control")

SOCKET_MODE = 0o660


def peer(request: web.Request) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of the unix socket."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return (0, -1, -1)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _groups_of(pid: int) -> set[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _who(request: web.Request) -> str:
    pid, uid, _ = peer(request)
    return describe(pid, uid)


def describe(pid: int, uid: int) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return f"{name} (uid {uid}, pid {pid})"


class ControlServer:
    """Serves the control API for a running daemon."""

    def __init__(self, daemon: Daemon, path: str) -> None:
        self.daemon = daemon
        self.path = path
        self.runner: web.AppRunner | None = None
        self._gid = os.getgid()

    async def start(self) -> None:
        _prepare(self.path)
        app = web.Application(middlewares=[self._errors, self._authorize])
        app.router.add_get("/status", self.get_status)
        app.router.add_post("/drain", self.post_drain)
        app.router.add_post("/restore", self.post_restore)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        old = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            await web.UnixSite(self.runner, self.path).start()
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        self._gid = os.stat(self.path).st_gid
        log.info("control_listening", socket=self.path, mode=oct(SOCKET_MODE))

    async def close(self) -> None:
        if self.runner is None:
            return  # never started: the socket, if any, belongs to someone else
        await self.runner.cleanup()
        self.runner = None
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
        except LbhealthdError as exc:
            log.error("control_request_failed", path=request.path, error=str(exc))
            return web.json_response({"error": str(exc)}, status=500)

    @web.middleware
    async def _authorize(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        pid, uid, gid = peer(request)
        allowed = uid in (0, os.getuid()) or gid == self._gid or self._gid in _groups_of(pid)
        if not allowed:
            log.warning("control_refused", peer=describe(pid, uid), path=request.path)
            return web.json_response({"error": "permission denied"}, status=403)
        return await handler(request)

    async def get_status(self, request: web.Request) -> web.Response:
        r = self.daemon.reconciler
        return web.json_response(status.from_daemon(r, time.time(), time.monotonic()))

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], ServerId]:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            return body, ServerId.parse(str(body.get("server", "")))
        except (ValueError, InvalidName) as exc:
            raise web.HTTPBadRequest(
                text=_json({"error": str(exc)}), content_type="application/json"
            ) from None

    def _member(self, sid: ServerId) -> Any:
        r = self.daemon.reconciler
        members = list(r.members.get(sid.pool, {}).values())
        try:
            return find_member(r.config, sid, members), members
        except UnknownServer as exc:
            raise web.HTTPNotFound(
                text=_json({"error": str(exc)}), content_type="application/json"
            ) from None

    async def post_drain(self, request: web.Request) -> web.Response:
        body, sid = await self._body(request)
        reason = str(body.get("reason") or "").strip()
        if not reason:
            return web.json_response({"error": "a reason is required"}, status=400)
        member, members = self._member(sid)
        force = bool(body.get("force"))
        kind = OverrideKind.MAINT if body.get("maint") else OverrideKind.DRAIN
        if in_rotation(member) and not force:
            try:
                check_caps(self.daemon.reconciler.config, sid, members)
            except CapRefused as exc:
                log.warning(
                    "manual_drain_refused", server=str(sid), who=_who(request), reason=str(exc)
                )
                return web.json_response({"error": str(exc)}, status=409)
        override = _new_override(sid, kind, reason, _who(request), body.get("for_s"))
        self.daemon.store.put_override(override)
        self.daemon.reconciler.record(
            sid,
            "override_set",
            kind=kind.value,
            who=override.who,
            reason=reason,
            until=override.expires_at,
            force=force,
        )
        log.info(
            "override_set",
            server=str(sid),
            kind=kind.value,
            who=override.who,
            reason=reason,
            until=override.expires_at,
            force=force,
        )
        await self.daemon.next_round()
        return web.json_response(self._result(sid, "drained", override))

    async def post_restore(self, request: web.Request) -> web.Response:
        body, sid = await self._body(request)
        member, _ = self._member(sid)
        r = self.daemon.reconciler
        store = self.daemon.store
        removed = store.remove_override(sid)
        notes = []
        if removed is not None:
            notes.append(f"removed the {removed.kind.value} override by {removed.who}")
            r.record(sid, "override_removed", who=_who(request), kind=removed.kind.value)
        owned = r.owned.get(sid)
        if owned is not None and owned.admin is not AdminState.READY:
            hold = body.get("for_s")
            hold = float(hold) if hold else r.config.daemon.manual_change_hold
            keep = _new_override(
                sid, OverrideKind.READY, "restored by an operator", _who(request), hold
            )
            store.put_override(keep)
            notes.append("kept in rotation" + (f" for {hold:g}s" if hold else ""))
        elif member.admin is not AdminState.READY:
            try:
                await r.driver.set_state(sid, AdminState.READY)
            except DriverError as exc:
                return web.json_response({"error": str(exc)}, status=502)
            r.record(
                sid,
                "set_state",
                value="ready",
                previous=member.admin.value,
                rule="override",
                reason="restore by an operator",
                who=_who(request),
            )
            notes.append(f"set ready (it was {member.admin.value}, not set by lbhealthd)")
        log.info("server_restore_requested", server=str(sid), who=_who(request), notes=notes)
        await self.daemon.next_round()
        return web.json_response(self._result(sid, "restored", None, notes))

    def _result(
        self, sid: ServerId, what: str, override: Override | None, notes: list[str] | None = None
    ) -> dict[str, Any]:
        r = self.daemon.reconciler
        member = r.members.get(sid.pool, {}).get(sid)
        want = r.decision.desired.get(sid) if r.decision else None
        applied = want is not None and (
            (member is not None and member.admin is want.admin and member.consistent)
            or r.last_set.get(sid) is want.admin
        )
        if sid.pool in r.unavailable:
            applied = False
        return {
            "result": what,
            "server": str(sid),
            "path": "daemon",
            "applied": applied,
            "lb_error": r.unavailable.get(sid.pool),
            "lb_state": member.admin.value if member else None,
            "until": override.expires_at if override else None,
            "notes": notes or [],
        }


def _new_override(
    sid: ServerId, kind: OverrideKind, reason: str, who: str, for_s: object
) -> Override:
    now = time.time()
    seconds = float(for_s) if isinstance(for_s, int | float) and for_s > 0 else None
    return Override(sid, kind, reason, who, now, now + seconds if seconds else None)


def _json(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc)


def _prepare(path: str) -> None:
    """Make the socket's directory; replace a stale socket; refuse if a daemon answers."""
    directory = Path(path).parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left by a daemon that died
        return
    except OSError as exc:
        raise ControlError(f"cannot check {path}: {exc}") from exc
    finally:
        probe.close()
    raise ControlError(f"another lbhealthd answers on {path}; refusing to start a second one")


async def wait_rounds(rounds: Callable[[], int], target: int, within: float) -> bool:
    """Wait until ``rounds()`` reaches ``target``; False after ``within`` seconds."""
    deadline = time.monotonic() + within
    while rounds() < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
