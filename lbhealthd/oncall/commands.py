"""The on-call commands: `drain`, `restore`, `status`.

Each goes through the running daemon's control socket when it answers. When no daemon runs,
`drain` and `restore` act directly on the LB through the configured sockets and record the
override in state_dir, so the daemon honours it when it starts; `status` shows the LB and
state_dir. The output always says which path was taken. A caller refused by the control socket
is never switched to the direct path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lbhealthd import status
from lbhealthd.config import Config
from lbhealthd.model import OverrideKind, ServerId
from lbhealthd.oncall import direct
from lbhealthd.oncall.client import call_daemon


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: its exit code and the lines to print (each is one line: the CLI
    shows a newline or other control character in it escaped)."""

    code: int
    lines: tuple[str, ...]
    document: dict[str, Any] | None = None


def _until(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "until restored"
    try:
        return "until " + datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds: say it as it is
        return f"until {ts!r} (Unix time)"


async def drain(
    config: Config, sid: ServerId, reason: str, for_s: float | None, force: bool, maint: bool
) -> Outcome:
    kind = OverrideKind.MAINT if maint else OverrideKind.DRAIN
    body = {"server": str(sid), "reason": reason, "for_s": for_s, "force": force, "maint": maint}
    answer = await call_daemon(config, "POST", "/drain", body)
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
    answer = await call_daemon(config, "POST", "/restore", {"server": str(sid), "for_s": for_s})
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
    return await _direct_restore(config, sid, for_s)


async def show_status(config: Config) -> Outcome:
    answer = await call_daemon(config, "GET", "/status")
    if answer is not None and answer[0] == 200:
        doc = answer[1]
    else:
        doc = await direct.status_document(config)
    unhealthy = any(
        not p.get("lb_available", True) or p.get("blind") or p.get("inconsistent")
        for p in doc["pools"]
    )
    return Outcome(1 if unhealthy else 0, tuple(status.render(doc).split("\n")), doc)


def _refusal(code: int, doc: dict[str, Any]) -> Outcome:
    message = str(doc.get("error", doc))
    return Outcome(2 if code in (400, 403, 404) else 1, (message,), doc)


def _lb(config: Config) -> str:
    lb = config.load_balancer
    if lb.type == "haproxy":
        return ", ".join(lb.haproxy.sockets)
    return lb.type


async def _direct_drain(
    config: Config, sid: ServerId, kind: OverrideKind, reason: str, for_s: float | None, force: bool
) -> Outcome:
    done, problem = await direct.drain(config, sid, kind, reason, for_s, force)
    if done is None:
        return Outcome(1, (f"daemon not running, and {problem}",))
    if done.lb_error is not None:
        return Outcome(
            1,
            (
                f"daemon not running; recorded the override in "
                f"{config.daemon.state_dir} but the LB refused: {done.lb_error}",
            ),
        )
    admin = "maint" if kind is OverrideKind.MAINT else "drain"
    until = done.override.expires_at if done.override else None
    return Outcome(
        0,
        (
            f"{kind.value}: {sid} is now {admin} in the LB, {_until(until)}",
            f"daemon not running: changed the LB directly ({_lb(config)}) and recorded the "
            f"override in {config.daemon.state_dir}; the daemon will honour it when it starts",
        ),
    )


async def _direct_restore(config: Config, sid: ServerId, for_s: float | None) -> Outcome:
    done, problem = await direct.restore(config, sid, for_s)
    if done is None:
        return Outcome(1, (f"daemon not running, and {problem}",))
    if done.lb_error is not None:
        return Outcome(1, (f"daemon not running; the LB refused: {done.lb_error}",))
    return Outcome(
        0,
        (
            f"restore: {sid} is now ready in the LB: {'; '.join(done.notes) or 'nothing to undo'}",
            f"daemon not running: changed the LB directly and updated {config.daemon.state_dir}",
        ),
    )


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


__all__ = ["Outcome", "drain", "dumps", "restore", "show_status"]
