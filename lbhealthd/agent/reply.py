"""The HAProxy agent-check reply: always ``ready N%``, never ``drain``.

N falls linearly from 100 at ``full_below`` to ``min_weight`` at ``drain_at`` and stays there
above it; an unknown cpu reads as ``ready 100%``. An agent answers for one server and knows
nothing of the pool, so it must not take its server out: every agent of a pool saying
``drain`` at once would empty it (HAProxy answers 503). Taking servers out is the daemon's
decision, made with the pool-wide caps (``max_drained``, ``min_in_service``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lbhealthd.agent.load import Load, finite


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the agent lowers the weight (above ``full_below``), and the load from which the
    server is worth draining (``drain_at``): the agent then reports its floor, ``min_weight``,
    and leaves the draining to the daemon."""

    full_below: float = 0.5
    drain_at: float = 0.95
    min_weight: int = 10  # percent of the configured weight, at and above drain_at

    def __post_init__(self) -> None:
        if not (math.isfinite(self.full_below) and math.isfinite(self.drain_at)):
            raise ValueError("full_below and drain_at must be finite numbers")
        if not 0.0 <= self.full_below < self.drain_at:
            raise ValueError(
                f"need 0 <= full_below < drain_at, got {self.full_below} and {self.drain_at}"
            )
        if isinstance(self.min_weight, bool) or not 1 <= self.min_weight <= 100:
            raise ValueError(f"min_weight must be a percentage 1..100, got {self.min_weight!r}")


def agent_weight(cpu: float, thresholds: Thresholds) -> int:
    """The weight percentage for ``cpu``: 100 down to ``min_weight``, reached at ``drain_at``."""
    t = thresholds
    if cpu <= t.full_below:
        return 100
    share = min(1.0, (cpu - t.full_below) / (t.drain_at - t.full_below))
    return max(t.min_weight, min(100, round(100 - share * (100 - t.min_weight))))


def agent_reply(load: Load, thresholds: Thresholds) -> str:
    """The agent-check line for ``load``: ``ready N%\\n``, whatever the load."""
    cpu = finite(load.cpu)
    if cpu is None:
        return "ready 100%\n"
    return f"ready {agent_weight(cpu, thresholds)}%\n"
