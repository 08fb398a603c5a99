"""The decision engine: pure, deterministic, with time passed in.

    decide(state, observations, overrides, settings, now, frozen=...) -> (new state, Decision)

Rules, per pool, in the order they apply each round:
1. Blind: if at least ``blind_threshold`` of the pool's latest probes failed, the pool is
   frozen (no drains, no restores; failed samples count neither way) and a warning says so.
   Once a probe failed, servers in rotation with no sample yet count as failed.
2. Samples: each server's newest sample is judged once (engine/verdict.py). Overloaded or failed
   samples extend the bad streak and reset the good one; healthy samples the reverse; samples in
   the band between the marks change neither (the hysteresis). A sample of the LB's counters of
   its own (``Observation.lb``) is judged once too, but only testifies to overload: over a high
   mark it counts as an overloaded sample (a step-down while ramping, as in rule 6); otherwise
   it is no evidence. It counts while starved (the LB measured it), but rule 8 still blocks.
3. Overrides win: a drain or maint override takes the server out whatever the caps (with a
   warning when the pool goes beyond them); a ready override keeps it in; when an override ends
   the daemon owns the server again and restores it only through rule 4.
4. Restore: a server the daemon drained comes back after ``rise`` healthy samples and once it has
   been out for its hold time, ``min_drain × flap_backoff^n`` where n grows with each re-drain
   within ``flap_window`` of a restore and decays with each window spent in service.
5. Drain: a server with ``fall`` consecutive bad samples goes out if the governor allows it
   (engine/governor.py); candidates are taken worst first: failed probes, then the largest
   value/high ratio, then the longer bad streak, then by name. With ``capacity_signal`` set,
   the servers left must carry the drained one's load (engine/capacity.py). Refused ones are
   reported as blocked with the rule and the evidence.
6. Slow start, gated by health: a server back in rotation gets a weight share rising from
   ``slow_start_floor`` to 1 over ``slow_start`` seconds of healthy samples (each vouching for
   at most two probe intervals: a gap without samples is no healthy time); band samples hold
   it, and a bad sample halves it (a step-down) instead of counting toward a drain until the
   share is at the floor. The share becomes a weight on a geometric ramp (engine/slowstart.py).
7. Hands off: a server whose state an operator changed by hand (``Observation.hand``) is let
   go of: its streaks start afresh, and one put back in rotation is kept in (the decision's
   ``released`` asks for a keep-in override). A slow-start weight changed by hand ends the ramp.
8. Starved (``frozen``): the round's samples are no evidence; drains and restores the rules
   would make are blocked with rule ``starved``. Overrides still apply.
9. Absent: a server the LB's read did not list gets no desired state, and its memory is kept:
   as long as the daemon holds it (drained, under an override, ramping up), else for
   ``absent_grace`` from the first read that missed it. Back, it resumes its drain, hold or
   ramp (which holds while it is missing: that is no healthy time).
10. Inconsistent: when the endpoints of the LB's HA pair do not list the same servers
    (``inconsistent``), the pool is frozen as a blind one is (no drains, no restores, a
    warning), since its size is unknown: caps are never computed on the union, and the
    warning for overrides beyond the caps counts only the servers every endpoint lists.
    Samples still count, and overrides still apply.
11. Enforced weights (``enforce_weights``): a server in rotation at its full share whose live
    weight differs from its expected one (``Observation.expected``) is set back to it (an
    action ``set_weight``, rule ``enforce_weights``; its desired weight is the expected one).
    Not while the engine ramps it up (the ramp climbs toward the expected weight instead; the
    round it ends is no correction) or holds it out, nor while it is out by someone else's
    hand.

No asyncio, no I/O, no clock reads, no logging: same input, same output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lbhealthd.engine.governor import is_blind
from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.persistence import Clamped, from_persisted, to_persisted
from lbhealthd.engine.pool import PoolPass
from lbhealthd.engine.settings import Marks, PoolSettings, Settings
from lbhealthd.engine.state import EngineState, Observation, ServerState
from lbhealthd.engine.verdict import Verdict, judge
from lbhealthd.model import (
    Action,
    Blocked,
    Decision,
    Desired,
    Override,
    Reason,
    Released,
    Sample,
    ServerId,
)

_NONE: frozenset[ServerId] = frozenset()

__all__ = [
    "Clamped",
    "EngineState",
    "Marks",
    "Observation",
    "PoolSettings",
    "ServerState",
    "Settings",
    "Verdict",
    "breaks_streak",
    "decide",
    "forget",
    "from_persisted",
    "judge",
    "to_persisted",
    "toward_transition",
]


def decide(
    state: EngineState,
    observations: Mapping[ServerId, Observation],
    overrides: Mapping[ServerId, Override],
    settings: Settings,
    now: float,
    *,
    frozen: bool = False,
    inconsistent: Mapping[str, frozenset[ServerId]] | None = None,
) -> tuple[EngineState, Decision]:
    """Decide one round for every pool in ``settings``. See the module docstring for the rules.

    Servers absent from ``observations`` are remembered for a while (rule 9); servers of pools
    not in ``settings`` are ignored. ``frozen``: the daemon is starved (rule 8).
    ``inconsistent``: by pool, the servers that not every endpoint of the LB's HA pair lists
    (rule 10).
    """
    # Grouped in the caller's order, not sorted: sorting 10,000 ids costs more than the rest
    # of the round. What the caller sees does not depend on that order: actions, blocked
    # changes and releases are sorted per pool, and drains are ranked by a total order.
    known = settings.pools
    pools: dict[str, list[ServerId]] = {}
    for sid in observations:
        pool = sid[0]
        if pool in known:
            group = pools.get(pool)
            if group is None:
                group = pools[pool] = []
            group.append(sid)
    servers: dict[ServerId, ServerState] = {}
    desired: dict[ServerId, Desired] = {}
    actions: list[Action] = []
    blocked: list[Blocked] = []
    released: list[Released] = []
    warnings: list[Reason] = []
    blind: set[str] = set()
    wakes: list[float] = []
    remembered = 0  # observed servers the engine had a memory of
    split: set[str] = set()
    for pool in sorted(pools):
        ps, ids = known[pool], pools[pool]
        partial = inconsistent.get(pool, _NONE) if inconsistent else _NONE
        done = PoolPass(ps, now, blind=False, frozen=frozen, partial=partial)
        done.each_server(ids, state.servers, observations, overrides)
        if is_blind(done.probed, done.failed, ps, done.unprobed):
            # Rare: the whole pass is made again, blind, and the first one dropped.
            done = PoolPass(ps, now, blind=True, frozen=frozen, partial=partial)
            done.each_server(ids, state.servers, observations, overrides)
            blind.add(pool)
        if partial:
            split.add(pool)
        done.whole_pool(observations, overrides)
        servers.update(done.servers)
        desired.update(done.desired)
        actions += done.actions
        blocked += done.blocked
        released += done.released
        warnings += done.warnings
        if done.next_wake is not None:
            wakes.append(done.next_wake)
        remembered += len(ids) - done.new
    # Rare: a server remembered but not observed (missing from the read, or in a pool not
    # decided this round). The common round compares two counts instead of looking it up.
    absent = _absent(state, known, servers, now) if remembered < len(state.servers) else {}
    decision = Decision(
        desired=desired,
        actions=tuple(actions),
        blocked=tuple(blocked),
        warnings=tuple(warnings),
        blind_pools=frozenset(blind),
        next_wake=min(wakes, default=None),
        released=tuple(released),
        inconsistent_pools=frozenset(split),
    )
    return EngineState(servers=servers, absent=absent), decision


def _absent(
    state: EngineState,
    known: Mapping[str, PoolSettings],
    servers: dict[ServerId, ServerState],
    now: float,
) -> dict[ServerId, float]:
    """Rule 9: keep (in ``servers``) the memory of the servers of the decided pools that were
    not observed; return since when each kept one is missing."""
    absent: dict[ServerId, float] = {}
    missing_since = state.absent
    in_service = Phase.IN_SERVICE
    for sid, st in state.servers.items():
        if sid in servers:
            continue
        ps = known.get(sid[0])
        if ps is None:
            continue  # its pool was not decided: the caller keeps it
        since = missing_since.get(sid, now)
        held = st.phase is not in_service or st.fraction < 1.0
        if held or now - since < ps.absent_grace:
            servers[sid] = st if st.fraction >= 1.0 else st._replace(ramp_at=now)
            absent[sid] = since
    return absent


def toward_transition(st: ServerState | None, sample: Sample, ps: PoolSettings) -> bool:
    """True when ``sample`` starts or extends a streak toward a transition: bad while the
    server is in service (toward a drain), healthy while the daemon holds it drained (toward
    a restore). Such a sample is worth confirming soon (fast confirmation) and deciding at
    once; the rules themselves are unchanged (``decide`` still counts ``fall`` and ``rise``)."""
    phase = Phase.IN_SERVICE if st is None else st.phase
    if phase is Phase.MANUAL:
        return False
    verdict = judge(sample, ps.marks).verdict
    if phase is Phase.IN_SERVICE:
        return verdict is Verdict.OVERLOADED or verdict is Verdict.FAILED
    return verdict is Verdict.HEALTHY


def breaks_streak(st: ServerState | None, sample: Sample, ps: PoolSettings) -> bool:
    """True when ``sample`` ends a streak under way: healthy while in service with bad samples
    counted, bad while drained with healthy ones counted. Worth deciding at once too, so a
    sample that would reset the count is never skipped for a newer one."""
    if st is None or st.phase is Phase.MANUAL:
        return False
    verdict = judge(sample, ps.marks).verdict
    if st.phase is Phase.IN_SERVICE:
        return st.bad > 0 and verdict is Verdict.HEALTHY
    return st.good > 0 and (verdict is Verdict.OVERLOADED or verdict is Verdict.FAILED)


def forget(state: EngineState, servers: Iterable[ServerId]) -> EngineState:
    """The state with what the engine knew of ``servers`` dropped: in service, streaks afresh
    (a change recovered after a crash left them in rotation after all). Flap memory stays."""
    kept = dict(state.servers)
    for sid in servers:
        st = kept.get(sid)
        if st is not None:
            kept[sid] = st._replace(
                phase=Phase.IN_SERVICE, manual=None, drained_at=None, hold=0.0, bad=0, good=0
            )
    return EngineState(kept)
