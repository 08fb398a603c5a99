"""Why the writer sends a command: what its action record and log line say."""

from __future__ import annotations

from dataclasses import dataclass

from lbhealthd.model import Action


@dataclass(frozen=True, slots=True)
class Why:
    """Why a command is sent: the rule, a one-line reason, who asked."""

    rule: str = "reconcile"
    reason: str = "converging to the desired state"
    who: str = "lbhealthd"

    @classmethod
    def of(cls, action: Action | None) -> Why:
        if action is None:
            return cls()
        who = action.reason.evidence.get("who")
        return cls(
            action.reason.rule.value, action.reason.message, str(who) if who else "lbhealthd"
        )
