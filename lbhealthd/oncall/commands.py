"""The on-call commands: `drain`, `restore`, `status`.

Each goes through the running daemon's control socket when it answers. When no daemon runs,
`drain` and `restore` act directly on the LB through the configured sockets and record the
override in state_dir, so the daemon honours it when it starts; `status` shows the LB and
state_dir. The output always says which path was taken. A caller refused by the control socket
is never switched to the direct path.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from lbhealthd import status
from lbhealthd.config import Config
from lbhealthd.drivers import make_driver
from lbhealthd.errors import ControlRefused, DriverError, LbhealthdError, UnknownServer
from lbhealthd.model import AdminState, Member, Override, OverrideKind, ServerId
from lbhealthd.overrides import check_caps, find_member, in_rotation
from lbhealthd.store import OwnedEntry, Store


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: its exit code and the lines to print."""

    code: int
    lines: tuple[str, ...]
    document: dict[str, Any] | None = None


async def call_daemon(
    path: str, method: str, route: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, JSON) from the daemon, or None when no daemon listens on ``path``."""
    connector = aiohttp.UnixConnector(path=path)
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, f"http://lbhealthd{route}", json=body) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, dict(json.loads(text))
            except (ValueError, TypeError):
                return resp.status, {"error": f"the daemon answered {resp.status}: {text[:200]}"}
    except aiohttp.ClientConnectorError as exc:
        code = getattr(exc.os_error, "errno", None)
        if code in (errno.EACCES, errno.EPERM):
            raise ControlRefused(
                f"permission denied on the control socket {path}: run as its owner or a "
                "member of its group"
            ) from None
        if code in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            return None
        raise


def _until(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "until restored"
    return "until " + datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _who() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid {os.getuid()}"
    return f"{name} (uid {os.getuid()}, pid {os.getpid()}, cli)"


async def drain(
    config: Config, sid: ServerId, reason: str, for_s: float | None, force: bool, maint: bool
) -> Outcome:
    kind = OverrideKind.MAINT if maint else OverrideKind.DRAIN
    body = {"server": str(sid), "reason": reason, "for_s": for_s, "force": force, "maint": maint}
    answer = await call_daemon(config.daemon.control_socket, "POST", "/drain", body)
    if answer is not None:
        code, doc = answer
        if code == 200 and doc.get("applied") is False:
            problem = doc.get("lb_error") or f"the LB shows {doc.get('lb_state')}"
            return Outcome(
                1,
                (
                    f"{kind.value}: override recorded for {sid}, {_until(doc.get('until'))}, but "
                    f"NOT yet applied ({problem}); the daemon keeps trying every round",
                ),
                doc,
            )
        if code == 200:
            return Outcome(
                0,
                (
                    f"{kind.value}: {sid} is now {doc.get('lb_state')} in the LB, "
                    f"{_until(doc.get('until'))} (via the running daemon)",
                ),
                doc,
            )
        return _refusal(code, doc)
    return await _direct_drain(config, sid, kind, reason, for_s, force)


async def restore(config: Config, sid: ServerId, for_s: float | None) -> Outcome:
    answer = await call_daemon(
        config.daemon.control_socket, "POST", "/restore", {"server": str(sid), "for_s": for_s}
    )
    if answer is not None:
        code, doc = answer
        if code == 200:
            notes = "; ".join(doc.get("notes") or []) or "nothing to undo"
            return Outcome(
                0,
                (
                    f"restore: {sid} is now {doc.get('lb_state')} in the LB: "
                    f"{notes} (via the running daemon)",
                ),
                doc,
            )
        return _refusal(code, doc)
    return await _direct_restore(config, sid)


async def show_status(config: Config) -> Outcome:
    answer = await call_daemon(config.daemon.control_socket, "GET", "/status")
    if answer is not None and answer[0] == 200:
        doc = answer[1]
    else:
        doc = await _direct_status(config)
    unhealthy = any(not p.get("lb_available", True) or p.get("blind") for p in doc["pools"])
    return Outcome(1 if unhealthy else 0, (status.render(doc),), doc)


def _refusal(code: int, doc: dict[str, Any]) -> Outcome:
    message = str(doc.get("error", doc))
    return Outcome(2 if code in (400, 403, 404) else 1, (message,), doc)


async def _members(config: Config, pool: str) -> tuple[Any, list[Member]]:
    driver = make_driver(config)
    snap = await driver.snapshot(pool)
    return driver, list(snap.members)


async def _direct_drain(
    config: Config, sid: ServerId, kind: OverrideKind, reason: str, for_s: float | None, force: bool
) -> Outcome:
    if sid.pool not in {p.name for p in config.pools}:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config")
    try:
        driver, members = await _members(config, sid.pool)
    except DriverError as exc:
        return Outcome(1, (f"daemon not running, and the LB could not be read: {exc}",))
    member = find_member(config, sid, members)
    if in_rotation(member) and not force:
        check_caps(config, sid, members)
    store = Store.open(config.daemon.state_dir)
    now = time.time()
    who = _who()
    override = Override(sid, kind, reason, who, now, now + for_s if for_s else None)
    store.put_override(override)
    admin = AdminState.MAINT if kind is OverrideKind.MAINT else AdminState.DRAIN
    try:
        await driver.set_state(sid, admin)
    except DriverError as exc:
        return Outcome(
            1,
            (
                f"daemon not running; recorded the override in "
                f"{config.daemon.state_dir} but the LB refused: {exc}",
            ),
        )
    finally:
        await driver.close()
    owned = store.load_owned()
    owned[sid] = OwnedEntry(sid, admin, now, f"{kind.value} override by {who}: {reason}")
    store.save_owned(owned)
    store.append_action(
        server=str(sid),
        action="set_state",
        value=admin.value,
        previous=member.admin.value,
        rule="override",
        reason=reason,
        who=who,
        path="direct",
        until=override.expires_at,
    )
    sockets = ", ".join(config.load_balancer.haproxy.sockets)
    return Outcome(
        0,
        (
            f"{kind.value}: {sid} is now {admin.value} in the LB, {_until(override.expires_at)}",
            f"daemon not running: changed the LB directly ({sockets}) and recorded the override in "
            f"{config.daemon.state_dir}; the daemon will honour it when it starts",
        ),
    )


async def _direct_restore(config: Config, sid: ServerId) -> Outcome:
    if sid.pool not in {p.name for p in config.pools}:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config")
    try:
        driver, members = await _members(config, sid.pool)
    except DriverError as exc:
        return Outcome(1, (f"daemon not running, and the LB could not be read: {exc}",))
    member = find_member(config, sid, members)
    store = Store.open(config.daemon.state_dir)
    notes = []
    removed = store.remove_override(sid)
    if removed is not None:
        notes.append(f"removed the {removed.kind.value} override by {removed.who}")
    try:
        if member.admin is not AdminState.READY:
            await driver.set_state(sid, AdminState.READY)
            notes.append(f"set ready (was {member.admin.value})")
            store.append_action(
                server=str(sid),
                action="set_state",
                value="ready",
                previous=member.admin.value,
                rule="override",
                reason="restore by an operator",
                who=_who(),
                path="direct",
            )
    except DriverError as exc:
        return Outcome(1, (f"daemon not running; the LB refused: {exc}",))
    finally:
        await driver.close()
    owned = store.load_owned()
    if owned.pop(sid, None) is not None:
        store.save_owned(owned)
    return Outcome(
        0,
        (
            f"restore: {sid} is now ready in the LB: {'; '.join(notes) or 'nothing to undo'}",
            f"daemon not running: changed the LB directly and updated {config.daemon.state_dir}",
        ),
    )


async def _direct_status(config: Config) -> dict[str, Any]:
    driver = make_driver(config)
    snapshots: dict[str, list[Member] | str] = {}
    try:
        for pool in config.pools:
            try:
                snapshots[pool.name] = list((await driver.snapshot(pool.name)).members)
            except DriverError as exc:
                snapshots[pool.name] = str(exc)
    finally:
        await driver.close()
    try:
        store = Store(config.daemon.state_dir)
        owned, overrides = store.load_owned(), store.load_overrides()
    except LbhealthdError:
        owned, overrides = {}, {}
    return status.from_lb(config, snapshots, owned, overrides)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


__all__ = ["Outcome", "drain", "dumps", "restore", "show_status"]
