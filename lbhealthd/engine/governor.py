"""The safety governor of one pool: how many servers may be out, and fail-open when blind.

Caps are computed on the count *after* the drain and rounded down, so a small pool can never
lose more than intended (3 servers at 40 %: floor(1.2) = 1 may be out, never 2):

    allowed  ⇔  out + 1 ≤ ⌊max_drained × N⌋  and  N − (out + 1) ≥ min_in_service

``out`` counts every server not in rotation, whatever took it out: the daemon's drains, an
operator's overrides, and servers the LB itself reports down or in maintenance.

Blind: when at least ``blind_threshold`` of the pool's latest probes failed at once, the
likelier cause is the daemon's own network or host, not the servers. The pool is frozen: no new
drains, and failed samples do not count toward ``fall`` while it lasts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lbhealthd.engine.settings import PoolSettings
from lbhealthd.model import Rule

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Budget:
    """What the pool allows right now."""

    size: int
    out: int
    max_out: int

    def check(self, settings: PoolSettings) -> Rule | None:
        """None if one more server may go out, else the rule that forbids it."""
        if self.out + 1 > self.max_out:
            return Rule.MAX_DRAINED
        if self.size - (self.out + 1) < settings.min_in_service:
            return Rule.MIN_IN_SERVICE
        return None

    def evidence(self, settings: PoolSettings) -> dict[str, object]:
        return {
            "pool_size": self.size,
            "out": self.out,
            "max_out": self.max_out,
            "max_drained": settings.max_drained,
            "min_in_service": settings.min_in_service,
        }


def budget(size: int, out: int, settings: PoolSettings) -> Budget:
    """The pool's budget given its size and how many servers are out now."""
    return Budget(size=size, out=out, max_out=math.floor(settings.max_drained * size + _EPS))


def is_blind(probed: int, failed: int, settings: PoolSettings, unprobed: int = 0) -> bool:
    """True when the share of failed probes reaches the blind threshold. Once a probe failed,
    the servers in rotation with no sample yet count as failed: at start, or when new servers
    come, a few failed samples among the first ones in must not drain before the rest are in
    (they may all be failing: the daemon's own network)."""
    if failed == 0:
        return False
    return (failed + unprobed) / (probed + unprobed) >= settings.blind_threshold - _EPS


def hold_time(level: int, settings: PoolSettings) -> float:
    """How long a drain lasts at least: min_drain × flap_backoff^level, capped."""
    try:
        hold = settings.min_drain * settings.flap_backoff**level
    except OverflowError:  # a level far past the cap (a long flapping, a damaged memory)
        hold = settings.flap_max_hold
    return max(settings.min_drain, min(hold, settings.flap_max_hold))
