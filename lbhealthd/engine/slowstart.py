"""Slow start: the weight share of a server back in rotation, and the weight it stands for.

The share rises linearly from ``slow_start_floor`` to 1 over ``slow_start`` seconds of healthy
samples (the engine holds it in the band and halves it on a bad sample). The weight follows a
geometric ramp, a constant ratio per step of the share, from a start weight to the server's
configured weight. The start is the floor share of that weight, but never above the weight of
the pool's other servers (their median): a server weighted 100 among servers weighted 1 starts
at 1, not at 10 = ten times their share.
"""

from __future__ import annotations

from collections.abc import Iterable

from lbhealthd.engine.settings import PoolSettings


def step(fraction: float, healthy_for: float, settings: PoolSettings) -> float:
    """The share after ``healthy_for`` more seconds of health."""
    if settings.slow_start <= 0:
        return 1.0
    rate = (1.0 - settings.slow_start_floor) / settings.slow_start
    return min(1.0, fraction + rate * max(0.0, healthy_for))


def weight(fraction: float, full: int, reference: float | None, floor: float) -> int | None:
    """The weight to set for ``fraction`` of a server whose configured weight is ``full``;
    None when it should have its full weight. ``reference`` is the median weight of the
    pool's other servers at their full weight (None when there are none)."""
    if fraction >= 1.0 or full <= 0:
        return None
    start = max(1.0, min(full * floor, full if reference is None else reference))
    span = 1.0 - floor
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (fraction - floor) / span))
    ramped: float = start * (full / start) ** progress
    return max(1, min(full, round(ramped)))


def reference_weight(weights: Iterable[int]) -> float | None:
    """The median of ``weights`` (those of the servers in rotation at their full weight)."""
    ordered = sorted(w for w in weights if w > 0)
    if not ordered:
        return None
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2
