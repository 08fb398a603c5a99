"""Wall-clock times as people read them: ``18:21 UTC (in 2m)``, never a raw Unix time.

Machine fields (JSON, state files) keep the number; these words are what sits beside it for a
person: the status table and page, the console log, the on-call commands' answers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["at_text", "iso_utc", "relative", "until_text", "who_text"]

DAY = 86400.0


def _moment(ts: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return None


def iso_utc(ts: float | None) -> str | None:
    """``2026-12-06T18:21:08Z``: the readable twin of a Unix time in JSON and logs."""
    moment = None if ts is None else _moment(ts)
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def at_text(ts: float, now: float) -> str:
    """``18:21 UTC`` within a day of ``now``, else with its date (``2026-12-08 18:21 UTC``)."""
    moment = _moment(ts)
    if moment is None:
        return f"{ts!r} (Unix time)"
    if abs(ts - now) < DAY:
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def relative(seconds: float) -> str:
    """``in 2m``, ``3h 5m ago``: a span in its two largest units."""
    span = abs(seconds)
    if span < 60:
        text = f"{span:.0f}s"
    elif span < 3600:
        text = f"{span // 60:.0f}m" + _more(span % 60 // 1, "s")
    elif span < DAY:
        text = f"{span // 3600:.0f}h" + _more(span % 3600 // 60, "m")
    else:
        text = f"{span // DAY:.0f}d" + _more(span % DAY // 3600, "h")
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _more(count: float, unit: str) -> str:
    return f" {count:.0f}{unit}" if count else ""


def until_text(until: float | None, now: float) -> str:
    """When an override ends: ``until 18:21 UTC (in 2m)``, or ``until restored``."""
    if until is None:
        return "until restored"
    return f"until {at_text(until, now)} ({relative(until - now)})"


_PID = re.compile(r", pid \d+\)$")


def who_text(who: str) -> str:
    """Who did something, for a person: ``alice (uid 1001)``. The recorded text also names the
    pid of the short-lived command that asked (``alice (uid 1001, pid 4599)``), kept in the
    state files and the action log for forensics but noise on a screen."""
    return _PID.sub(")", who)
