"""The on-call commands: `drain`, `restore`, `status`.

Each goes through the running daemon's control socket when it answers. When no daemon runs,
`drain` and `restore` act directly on the LB through the configured sockets and record the
override in state_dir, so the daemon honours it when it starts; `status` shows the LB and
state_dir. The output always says which path was taken. A caller refused by the control socket
is never switched to the direct path.

A config file that does not validate (a reload the daemon refused, say) does not keep anyone
from the running daemon: the commands reach it through what can be read of the file
(lbhealthd.config.lenient), with a warning naming the problem. The direct path needs the whole
config, so without a daemon they change nothing, say so, and say how to do it by hand.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lbhealthd import status
from lbhealthd.config import Config
from lbhealthd.config.lenient import Broken, Reach
from lbhealthd.model import OverrideKind, ServerId
from lbhealthd.oncall import direct
from lbhealthd.oncall.client import call_daemon
from lbhealthd.oncall.restored import restore_lines


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: its exit code and the lines to print (each is one line: the CLI
    shows a newline or other control character in it escaped)."""

    code: int
    lines: tuple[str, ...]
    document: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()  # for stderr, whatever the outcome


def _until(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "until restored"
    try:
        return "until " + datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds: say it as it is
        return f"until {ts!r} (Unix time)"


async def _ask(
    config: Config | Broken, method: str, route: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]] | None:
    reach = config.reach if isinstance(config, Broken) else Reach.of(config)
    return await call_daemon(reach, method, route, body)


def _warned(config: Config | Broken, outcome: Outcome) -> Outcome:
    """The outcome of a command the daemon answered, with the broken file's warning."""
    if not isinstance(config, Broken):
        return outcome
    return dataclasses.replace(outcome, warnings=(config.warning, *outcome.warnings))


async def drain(
    config: Config | Broken,
    sid: ServerId,
    reason: str,
    for_s: float | None,
    force: bool,
    maint: bool,
) -> Outcome:
    kind = OverrideKind.MAINT if maint else OverrideKind.DRAIN
    body = {"server": str(sid), "reason": reason, "for_s": for_s, "force": force, "maint": maint}
    answer = await _ask(config, "POST", "/drain", body)
    if answer is not None:
        return _warned(config, _drained(sid, kind, *answer))
    if isinstance(config, Broken):
        return _no_daemon(config, "drain", f"set server {sid} state {kind.value}")
    return await _direct_drain(config, sid, kind, reason, for_s, force)


def _drained(sid: ServerId, kind: OverrideKind, code: int, doc: dict[str, Any]) -> Outcome:
    if code != 200:
        return _refusal(code, doc)
    warnings = tuple(str(w) for w in doc.get("warnings") or [])
    if doc.get("applied") is False:
        problem = doc.get("lb_error") or f"the LB shows {doc.get('lb_state')}"
        line = (
            f"{kind.value}: override recorded for {sid}, {_until(doc.get('until'))}, but "
            f"NOT yet applied ({problem}); the daemon keeps trying every round"
        )
        return Outcome(1, (line,), doc, warnings)
    line = (
        f"{kind.value}: {sid} is now {doc.get('lb_state')} in the LB, "
        f"{_until(doc.get('until'))} (via the running daemon)"
    )
    return Outcome(0, (line,), doc, warnings)


async def restore(
    config: Config | Broken, sid: ServerId, for_s: float | None, reason: str = ""
) -> Outcome:
    body = {"server": str(sid), "for_s": for_s, "reason": reason}
    answer = await _ask(config, "POST", "/restore", body)
    if answer is not None:
        code, doc = answer
        if code != 200:
            return _warned(config, _refusal(code, doc))
        return _warned(config, Outcome(0, restore_lines(sid, doc, reason), doc))
    if isinstance(config, Broken):
        return _no_daemon(config, "restore", f"set server {sid} state ready")
    return await _direct_restore(config, sid, for_s, reason)


async def show_status(config: Config | Broken) -> Outcome:
    answer = await _ask(config, "GET", "/status")
    if answer is not None and answer[0] == 200:
        doc = answer[1]
    elif isinstance(config, Broken):
        if answer is not None:
            return _warned(config, _refusal(answer[0], answer[1]))
        return _no_daemon(config, "status", "show servers state")
    else:
        doc = await direct.status_document(config)
    unhealthy = any(
        not p.get("lb_available", True) or p.get("blind") or p.get("inconsistent")
        for p in doc["pools"]
    )
    outcome = Outcome(1 if unhealthy else 0, tuple(status.render(doc).split("\n")), doc)
    return _warned(config, outcome)


def _no_daemon(config: Broken, what: str, command: str) -> Outcome:
    """No daemon answered and the file is refused: nothing is done, and the way by hand."""
    reach = config.reach
    where = reach.control_socket + ("" if reach.from_file else ", the default: give --socket")
    did = "nothing was read" if what == "status" else "nothing was changed"
    line = (
        f"{what}: the daemon is not running (nothing answers on {where}) and {config.source} "
        f"is invalid ({config.problem}): {did}; fix the file"
    )
    hand = _by_hand(reach, command)
    return Outcome(2, (line + (f", or use the LB by hand: {hand}" if hand else ""),))


def _by_hand(reach: Reach, command: str) -> str:
    """The HAProxy runtime command a person would send through each admin socket."""
    if reach.lb_type == "elbv2":
        return ""
    ends = [] if reach.haproxy_sockets else ["unix-connect:HAPROXY_ADMIN_SOCKET"]
    for sock in reach.haproxy_sockets:
        kind, _, address = sock.partition(":")
        ends.append(f"unix-connect:{address}" if kind == "unix" else f"tcp:{address}")
    return "; ".join(f"echo '{command}' | socat stdio {end}" for end in ends)


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
        warnings=done.warnings,
    )


async def _direct_restore(
    config: Config, sid: ServerId, for_s: float | None, reason: str
) -> Outcome:
    done, problem = await direct.restore(config, sid, for_s, reason)
    if done is None:
        return Outcome(1, (f"daemon not running, and {problem}",))
    if done.lb_error is not None:
        notes = "".join(f"; {note}" for note in done.notes)
        return Outcome(1, (f"daemon not running; the LB refused: {done.lb_error}{notes}",))
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
