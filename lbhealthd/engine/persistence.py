"""What of the engine's memory survives a restart, as plain JSON-ready data.

Kept: each drain's phase, start and hold, the flap level, the last restore and the slow-start
share. Not kept: streaks and verdicts (a restarted daemon observes first). Times are stored as
wall-clock seconds and read back onto the caller's monotonic clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.state import EngineState, ServerState
from lbhealthd.errors import LbhealthdError
from lbhealthd.model import Override, OverrideKind, ServerId


def to_persisted(state: EngineState, now: float, wall: float) -> dict[str, dict[str, object]]:
    """The servers worth remembering, by name (those with nothing to remember are left out)."""

    def to_wall(t: float | None) -> float | None:
        return None if t is None else round(wall - (now - t), 3)

    return {
        str(sid): {
            "phase": st.phase.value,
            "drained_at": to_wall(st.drained_at),
            "hold": st.hold,
            "flap_level": st.flap_level,
            "restored_at": to_wall(st.restored_at),
            "fraction": st.fraction,
        }
        for sid, st in sorted(state.servers.items())
        if st.phase is not Phase.IN_SERVICE
        or st.flap_level
        or st.restored_at is not None
        or st.fraction < 1.0
    }


def from_persisted(
    data: object,
    held_out: Mapping[ServerId, float],
    overrides: Mapping[ServerId, Override],
    now: float,
    wall: float,
) -> tuple[EngineState, list[str]]:
    """The engine's memory rebuilt from ``to_persisted``'s data, and the entries ignored.

    ``held_out`` is what the LB writer holds out of rotation, with since when (wall clock): a
    remembered drain the writer no longer holds was undone meanwhile (the server is in
    service); one it holds that the data does not know (a drain made by the on-call command
    while the daemon was down) is out, and comes back only through ``rise``.
    """

    def to_mono(t: object) -> float | None:
        return None if not isinstance(t, int | float) else now - (wall - float(t))

    servers: dict[ServerId, ServerState] = {}
    ignored: list[str] = []
    entries = data.items() if isinstance(data, Mapping) else ()
    for key, raw in entries:
        try:
            sid = ServerId.parse(str(key))
            phase = Phase(raw["phase"])
            fraction = min(1.0, max(0.0, float(raw.get("fraction", 1.0) or 1.0)))
            hold = float(raw.get("hold") or 0.0)
            flap_level = int(raw.get("flap_level") or 0)
        except (LbhealthdError, KeyError, ValueError, TypeError, AttributeError):
            ignored.append(str(key))
            continue
        if phase is not Phase.IN_SERVICE and sid not in held_out:
            phase = Phase.IN_SERVICE
        override = overrides.get(sid)
        servers[sid] = ServerState(
            phase=phase,
            drained_at=to_mono(raw.get("drained_at")),
            hold=hold,
            flap_level=flap_level,
            restored_at=to_mono(raw.get("restored_at")),
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
    return EngineState(servers), ignored
