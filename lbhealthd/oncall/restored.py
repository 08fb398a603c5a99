"""What `lbhealthd restore` says once the running daemon has carried it out.

The daemon answers with the server's entry of the status document taken after the round the
restore started: its desired state, its verdict and bad streak, the pool's ``fall``, and the
signals over their high marks. The words say what will happen next, and why, in the terms of
the engine's rules (package docstring of lbhealthd.engine):

- a server lbhealthd held out comes back with a keep-in hold (a ready override, rule 3): no
  drain while it lasts, whatever its samples; its bad streak, reset by the restore, counts
  again meanwhile, so a server still sick when the hold ends goes out at once if it had
  ``fall`` bad samples in a row by then;
- with no hold (a second restore ends the first one's, or there was nothing to undo), the
  server is one like any other: drained after ``fall`` bad samples in a row, or at once if it
  had them already, which the round the restore started shows.

Each line is a statement of the server's state, not of an error: the restore was done.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lbhealthd.model import ServerId

__all__ = ["restore_lines"]


def restore_lines(sid: ServerId, doc: dict[str, Any], reason: str) -> tuple[str, ...]:
    st: dict[str, Any] = doc.get("status") or {}
    done = "; ".join(doc.get("notes") or []) or "nothing to undo"
    said = f" (your reason: {reason})" if reason else ""
    desired = st.get("desired")
    if not st:  # the round did not read the server: say only what was done
        return (
            f"restore: {sid} is {doc.get('lb_state')} in the LB: {done}{said} "
            "(via the running daemon)",
        )
    if doc.get("applied") is False and desired == "ready":
        problem = doc.get("lb_error") or f"the LB shows {doc.get('lb_state')}"
        return (
            f"restore: recorded for {sid} ({done}{said}), but NOT yet applied ({problem}); the "
            "daemon keeps trying every round",
        )
    if doc.get("kept_in"):
        return (
            f"restore: {sid} is back in rotation{_weight(st)}: {done}{_until(doc)}{said} "
            "(via the running daemon)",
            _after_hold(sid, st, doc.get("until")),
        )
    if desired in ("drain", "maint"):
        return (
            f"restore: {done}{said} (via the running daemon)",
            f"{sid} is out of rotation again: lbhealthd took it out at once, "
            f"{_decision(st)}. To keep it in anyway: lbhealthd restore {sid} "
            "(a hold of daemon.manual_change_hold, or --for)",
        )
    return (f"restore: {done}{said} (via the running daemon)", _in_rotation(sid, st))


def _after_hold(sid: ServerId, st: dict[str, Any], until: object) -> str:
    fall = st.get("fall")
    when = "when the hold ends" if isinstance(until, int | float) else "once you end the hold"
    end = f"lbhealthd restore {sid} ends the hold now"
    if st.get("verdict") in ("overloaded", "failed"):
        return (
            f"{sid} is still {_sick(st)}: lbhealthd does not drain it during the hold; {when}, "
            f"it drains it again at once, caps permitting, if by then it has had {fall} bad "
            f"samples in a row (fall {fall}). To take it out now: lbhealthd drain {sid} "
            f"--reason TEXT; {end}"
        )
    return (
        f"{sid} is {_state_of(st)}: lbhealthd does not drain it during the hold; {when}, it "
        f"drains it only after {fall} bad samples in a row (fall {fall}). {end}"
    )


def _in_rotation(sid: ServerId, st: dict[str, Any]) -> str:
    fall, bad = st.get("fall"), st.get("bad", 0)
    blocked = st.get("blocked")
    if blocked and blocked.get("action") == "drain":
        return (
            f"{sid} stays in rotation, not held: lbhealthd would drain it but cannot "
            f"({blocked.get('rule')}: {blocked.get('reason')})"
        )
    if st.get("verdict") in ("overloaded", "failed"):
        return (
            f"{sid} is in rotation, not held, and still {_sick(st)}: lbhealthd drains it "
            f"after {fall} bad samples in a row (fall {fall}; {bad} so far)"
        )
    return (
        f"{sid} is in rotation, not held, {_state_of(st)}: lbhealthd drains it only after "
        f"{fall} bad samples in a row (fall {fall})"
    )


def _sick(st: dict[str, Any]) -> str:
    over = st.get("over")
    return f"{st.get('verdict')} ({over})" if over else str(st.get("verdict"))


def _state_of(st: dict[str, Any]) -> str:
    verdict = st.get("verdict")
    if verdict == "healthy":
        return "healthy at its last sample"
    if verdict == "band":
        return "between its marks at its last sample"
    return "not judged yet (no sample of it since the daemon started)"


def _decision(st: dict[str, Any]) -> str:
    last = st.get("last_decision") or {}
    return f"{last.get('reason')} (rule {last.get('rule')})" if last else "by its rules"


def _weight(st: dict[str, Any]) -> str:
    fraction = st.get("desired_weight_fraction")
    if isinstance(fraction, int | float) and fraction < 1.0:
        return f" (slow start: {fraction:.0%} of its weight, rising while it is healthy)"
    return ""


def _until(doc: dict[str, Any]) -> str:
    ts = doc.get("until")
    if not isinstance(ts, int | float):
        return ", held in until you restore it again"
    try:
        return ", until " + datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f", until {ts!r} (Unix time)"
