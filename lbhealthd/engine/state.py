"""What the engine remembers between rounds, per server. Plain frozen values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.verdict import Verdict
from lbhealthd.model import ByHand, OverrideKind, Sample, ServerId


class ServerState(NamedTuple):
    """One server's memory. Times are the caller's clock (``now`` of decide).

    Immutable like the other value types, but a NamedTuple rather than a frozen dataclass:
    the engine builds one per server every round, and a tuple is built about five times
    faster (change it with ``_replace``).
    """

    phase: Phase = Phase.IN_SERVICE
    bad: int = 0  # consecutive overloaded or failed samples (band samples do not reset it)
    good: int = 0  # consecutive healthy samples (band samples do not reset it)
    last_sample_at: float | None = None
    verdict: Verdict | None = None
    ratio: float = 0.0  # the last sample's largest value/high
    drained_at: float | None = None
    hold: float = 0.0  # how long the current drain lasts at least
    flap_level: int = 0
    restored_at: float | None = None
    manual: OverrideKind | None = None
    fraction: float = 1.0  # share of its full weight; below 1 while it ramps back up
    ramp_at: float | None = None  # when the ramp last moved (or held)
    last_lb_at: float | None = None  # the time of the newest LB sample judged (Observation.lb)

    def judged(self, bad: int, good: int, at: float, verdict: Verdict, ratio: float) -> ServerState:
        """This state after one more sample was judged (the streaks and the last verdict).

        It runs for every server every round, so it builds the tuple directly rather than
        through ``_replace`` or the keyword constructor (several times slower); every field
        is still named, so a field added to the class must be added here too, as a test
        of the engine checks.
        """
        return _new(
            ServerState,
            (
                self.phase,
                bad,
                good,
                at,
                verdict,
                ratio,
                self.drained_at,
                self.hold,
                self.flap_level,
                self.restored_at,
                self.manual,
                self.fraction,
                self.ramp_at,
                self.last_lb_at,
            ),
        )


_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class EngineState:
    """Every server's memory, by server; ``absent``: the servers the LB's last read did not
    list, each with the time of the first read that missed it (their memory is in
    ``servers`` while it is kept)."""

    servers: Mapping[ServerId, ServerState] = field(default_factory=dict)
    absent: Mapping[ServerId, float] = field(default_factory=dict)


class Observation(NamedTuple):
    """What the engine is told about a server this round (a tuple for the same reason).

    ``sample`` is its newest probe (the engine counts each sample once, by its time).
    ``external_out`` is true when the server is out of rotation for a reason the daemon does
    not own (an operator's MAINT set by other means, the LB's own checks marking it down).
    ``weight`` and ``full_weight`` are its weight in the LB now and its configured one (the
    slow-start curve runs between a start weight and the full one).
    ``hand`` says what an operator changed by hand of what lbhealthd had set (a state of a
    server it held out, or a slow-start weight): the engine lets go of the server (rule 7).
    ``expected`` is the weight the pool's ``expected_weights`` gives it (None: none given);
    with ``enforce_weights`` on, it is the server's full weight (rule 11).
    ``lb`` is the load balancer's counters for the server (``lb_queue`` ...) read when no new
    probe sample came with them: a sample of their own, which can only testify to overload
    (rule 2).
    """

    sample: Sample | None = None
    external_out: bool = False
    weight: int = 0
    full_weight: int = 0
    hand: ByHand | None = None
    expected: int | None = None
    lb: Sample | None = None
