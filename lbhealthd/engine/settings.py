"""The engine's own settings: plain frozen values converted from the validated config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Marks:
    """A signal is overloaded at or above ``high`` and healthy strictly below ``low``."""

    high: float
    low: float


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Decision settings of one pool. Durations in seconds, shares in [0, 1]."""

    name: str
    marks: Mapping[str, Marks] = field(
        default_factory=lambda: {"latency_ms": Marks(high=500.0, low=200.0)}
    )
    fall: int = 3
    rise: int = 5
    min_drain: float = 30.0
    flap_backoff: float = 2.0
    flap_window: float = 600.0
    flap_max_hold: float = 600.0
    slow_start: float = 60.0
    slow_start_floor: float = 0.1
    max_drained: float = 0.4
    min_in_service: int = 2
    blind_threshold: float = 0.8
    absent_grace: float = 30.0  # how long a server missing from the LB's reads is remembered
    # Set a server in rotation whose live weight differs from ``Observation.expected`` back
    # to it (and ramp a slow start toward it).
    enforce_weights: bool = False
    # A signal of ``marks`` whose value is the share of a server's capacity in use: drains
    # only while the servers left can carry the load (engine/capacity.py). None: no check.
    capacity_signal: str | None = None
    # The probe interval: a healthy sample vouches for at most two of them of a slow start
    # (a gap without samples, a starved daemon, is no healthy time). None: no bound.
    probe_interval: float | None = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of every pool, by pool name."""

    pools: Mapping[str, PoolSettings]
