"""What of the engine's memory survives a restart, as plain JSON-ready data.

Kept: each drain's phase, start and hold, the flap level, the last restore and the slow-start
share. Not kept: streaks and verdicts (a restarted daemon observes first). Times are stored as
wall-clock seconds and read back onto the caller's monotonic clock.

What is read back is bounded by what could be true, since a wrong value would hold a server out
(a drain dated a day ahead is "out only -86391 s" for a day): a time after now is taken as now,
a hold is at most the pool's longest (flap_max_hold), and a drain remembered without a usable
start is out since the LB writer says. Each such change is returned, for the caller to report.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import NamedTuple

from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.settings import Settings
from lbhealthd.engine.state import EngineState, ServerState
from lbhealthd.errors import LbhealthdError
from lbhealthd.model import Override, OverrideKind, ServerId

# Times are stored rounded to the millisecond: one that far ahead of now is that rounding.
_ROUNDING = 0.001


class Clamped(NamedTuple):
    """A remembered value that could not be true, and the one used instead (times as wall
    clock; None: the value was dropped). ``stored`` is None when the value was missing."""

    server: str
    field: str
    stored: object
    used: float | None


def to_persisted(state: EngineState, now: float, wall: float) -> dict[str, dict[str, object]]:
    """The servers worth remembering, by name (those with nothing to remember are left out)."""

    def to_wall(t: float | None) -> float | None:
        return None if t is None else round(wall - (now - t), 3)

    in_service = Phase.IN_SERVICE
    worth = [
        (sid, st)
        for sid, st in state.servers.items()
        if st.phase is not in_service
        or st.flap_level
        or st.restored_at is not None
        or st.fraction < 1.0
    ]
    worth.sort()  # the few worth it, not every server
    return {
        str(sid): {
            "phase": st.phase.value,
            "drained_at": to_wall(st.drained_at),
            "hold": st.hold,
            "flap_level": st.flap_level,
            "restored_at": to_wall(st.restored_at),
            "fraction": st.fraction,
        }
        for sid, st in worth
    }


def from_persisted(
    data: object,
    held_out: Mapping[ServerId, float],
    overrides: Mapping[ServerId, Override],
    now: float,
    wall: float,
    settings: Settings,
) -> tuple[EngineState, list[str], list[Clamped]]:
    """The engine's memory rebuilt from ``to_persisted``'s data, the entries ignored, and the
    values clamped (see the module docstring).

    ``held_out`` is what the LB writer holds out of rotation, with since when (wall clock): a
    remembered drain the writer no longer holds was undone meanwhile (the server is in
    service); one it holds that the data does not know (a drain made by the on-call command
    while the daemon was down) is out, and comes back only through ``rise``.
    """

    def to_mono(t: float | None) -> float | None:
        return None if t is None else now - (wall - t)

    servers: dict[ServerId, ServerState] = {}
    ignored: list[str] = []
    clamped: list[Clamped] = []
    entries = data.items() if isinstance(data, Mapping) else ()
    for key, raw in entries:
        try:
            sid = ServerId.parse(str(key))
            phase = Phase(raw["phase"])
            fraction = min(1.0, max(0.0, float(raw.get("fraction", 1.0) or 1.0)))
            hold = float(raw.get("hold") or 0.0)
            flap_level = int(raw.get("flap_level") or 0)
        except (LbhealthdError, KeyError, ValueError, TypeError, AttributeError, OverflowError):
            ignored.append(str(key))
            continue
        if phase is not Phase.IN_SERVICE and sid not in held_out:
            phase = Phase.IN_SERVICE
        fix = _Bounds(str(sid), wall, clamped)
        out = phase is not Phase.IN_SERVICE
        since = min(held_out[sid], wall) if out else None
        drained_at = fix.time("drained_at", raw.get("drained_at"), since)
        restored_at = fix.time("restored_at", raw.get("restored_at"))
        pool = settings.pools.get(sid.pool)
        if out and pool is not None:
            longest = max(pool.min_drain, pool.flap_max_hold)
            if not 0.0 <= hold <= longest:  # NaN too
                hold = fix.note("hold", hold, 0.0 if hold < 0.0 else longest)
        override = overrides.get(sid)
        servers[sid] = ServerState(
            phase=phase,
            drained_at=to_mono(drained_at),
            hold=hold,
            flap_level=flap_level,
            restored_at=to_mono(restored_at),
            fraction=fraction,
            ramp_at=now,
            manual=override.kind if phase is Phase.MANUAL and override is not None else None,
        )
    for sid, since in held_out.items():
        if sid in servers:
            continue
        override = overrides.get(sid)
        manual = override is not None and override.kind is not OverrideKind.READY
        servers[sid] = ServerState(
            phase=Phase.MANUAL if manual else Phase.DRAINED,
            drained_at=now - max(0.0, wall - since),
            manual=override.kind if manual and override is not None else None,
        )
    return EngineState(servers), ignored, clamped


class _Bounds:
    """Bounds the remembered values of one server, noting each value it changes."""

    def __init__(self, server: str, wall: float, clamped: list[Clamped]) -> None:
        self.server, self.wall, self.clamped = server, wall, clamped

    def time(self, field: str, stored: object, instead: float | None = None) -> float | None:
        """A remembered wall time, no later than now; ``instead`` when it is missing or not a
        finite number (noted, unless it is missing and there is nothing instead)."""
        t = None
        if isinstance(stored, int | float) and not isinstance(stored, bool):
            with contextlib.suppress(OverflowError):  # an int past any float
                t = float(stored)
            if t is not None and not math.isfinite(t):
                t = None
        if t is None:
            if stored is not None or instead is not None:
                self.clamped.append(Clamped(self.server, field, stored, instead))
            return instead
        if t > self.wall + _ROUNDING:
            return self.note(field, stored, self.wall)
        return min(t, self.wall)

    def note(self, field: str, stored: object, used: float) -> float:
        self.clamped.append(Clamped(self.server, field, stored, used))
        return used
