"""The per-server state machine, as data. The engine looks transitions up in TRANSITIONS and
docs/decisions.md shows the diagram rendered from the same table (a test keeps them equal).

Phases:
- IN_SERVICE: in rotation (possibly ramping up its weight after a return: slow start).
- DRAINED: taken out by the daemon itself; the daemon owns it and will bring it back.
- MANUAL: taken out by an operator's override (drain or maint); only the override decides.

Events (guards in brackets are checked by the engine before it looks the transition up):
- FALL: ``fall`` consecutive overloaded or failed samples [not blind, within the pool's caps,
  no keep-in override].
- RISE: ``rise`` consecutive healthy samples [out for at least min_drain × flap_backoff^n].
- OVERRIDE_OUT: an operator's drain or maint override.
- OVERRIDE_READY: an operator's keep-in (ready) override.
- OVERRIDE_ENDED: the override was removed or expired; the daemon takes over and restores the
  server through the ordinary RISE rule, so only a healthy server comes back.
- HAND_CHANGE: an operator changed by hand, by other means than lbhealthd, the state of a
  server lbhealthd held out; lbhealthd lets go of it and its streaks start afresh.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    IN_SERVICE = "in_service"
    DRAINED = "drained"
    MANUAL = "manual"


class Event(enum.StrEnum):
    FALL = "fall"
    RISE = "rise"
    OVERRIDE_OUT = "override_out"
    OVERRIDE_READY = "override_ready"
    OVERRIDE_ENDED = "override_ended"
    HAND_CHANGE = "hand_change"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.IN_SERVICE, Event.FALL): Phase.DRAINED,
    (Phase.DRAINED, Event.RISE): Phase.IN_SERVICE,
    (Phase.IN_SERVICE, Event.OVERRIDE_OUT): Phase.MANUAL,
    (Phase.DRAINED, Event.OVERRIDE_OUT): Phase.MANUAL,
    (Phase.DRAINED, Event.OVERRIDE_READY): Phase.IN_SERVICE,
    (Phase.MANUAL, Event.OVERRIDE_READY): Phase.IN_SERVICE,
    (Phase.MANUAL, Event.OVERRIDE_ENDED): Phase.DRAINED,
    (Phase.DRAINED, Event.HAND_CHANGE): Phase.IN_SERVICE,
    (Phase.MANUAL, Event.HAND_CHANGE): Phase.IN_SERVICE,
}


def step(phase: Phase, event: Event) -> Phase:
    """The phase after ``event``; an event with no transition leaves the phase as it is."""
    return TRANSITIONS.get((phase, event), phase)


def render_mermaid() -> str:
    """The state diagram of TRANSITIONS in Mermaid syntax (embedded in docs/decisions.md)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.IN_SERVICE.value}"]
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {event.value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_mermaid(), end="")
