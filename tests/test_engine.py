"""The pure engine, rule by rule, on scripted samples with plain float times."""

from __future__ import annotations

import pytest

from lbhealthd.engine import PoolSettings
from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.settings import Marks
from lbhealthd.engine.verdict import Verdict, judge
from lbhealthd.model import (
    ActionKind,
    AdminState,
    Override,
    OverrideKind,
    ProbeOutcome,
    Rule,
    ServerId,
)
from lbhealthd.testing import failed, ok
from tests.engine_sim import Sim, acted

S1 = ServerId("api", "s1")


def pool(**kw: object) -> PoolSettings:
    base: dict[str, object] = dict(
        name="api",
        fall=3,
        rise=2,
        min_drain=5.0,
        max_drained=0.4,
        min_in_service=2,
        slow_start=0.0,
        flap_window=60.0,
        flap_max_hold=40.0,
        flap_backoff=2.0,
    )
    base.update(kw)
    return PoolSettings(**base)  # type: ignore[arg-type]


MARKS = {"latency_ms": Marks(500, 200), "cpu": Marks(0.9, 0.6)}


@pytest.mark.parametrize(
    ("signals", "outcome", "expected"),
    [
        ({"latency_ms": 100, "cpu": 0.1}, ProbeOutcome.OK, Verdict.HEALTHY),
        ({"latency_ms": 100, "cpu": 0.95}, ProbeOutcome.OK, Verdict.OVERLOADED),
        ({"latency_ms": 500, "cpu": 0.1}, ProbeOutcome.OK, Verdict.OVERLOADED),
        ({"latency_ms": 300, "cpu": 0.1}, ProbeOutcome.OK, Verdict.BAND),
        ({"latency_ms": 100, "cpu": 0.6}, ProbeOutcome.OK, Verdict.BAND),
        ({"latency_ms": 100}, ProbeOutcome.OK, Verdict.HEALTHY),
        ({}, ProbeOutcome.OK, Verdict.BAND),
        ({}, ProbeOutcome.TIMEOUT, Verdict.FAILED),
        ({}, ProbeOutcome.BAD_BODY, Verdict.FAILED),
    ],
    ids=[
        "all-low",
        "cpu-high",
        "latency-at-high",
        "latency-band",
        "cpu-at-low",
        "cpu-missing",
        "no-signals",
        "timeout",
        "bad-body",
    ],
)
def test_verdict(signals: dict[str, float], outcome: ProbeOutcome, expected: Verdict) -> None:
    """A sample is overloaded if any signal reaches high, healthy if all are below low."""
    from lbhealthd.model import Sample

    assert judge(Sample(S1, 1.0, outcome, signals), MARKS).verdict is expected


def test_missing_signal_is_named() -> None:
    """A configured signal absent from the sample is reported as missing evidence."""
    j = judge(ok(S1, 1.0, latency_ms=10), MARKS)
    assert j.missing == ("cpu",)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ({"s1": "OOO", "s2": "HHH", "s3": "HHH", "s4": "HHH", "s5": "HHH"}, [(2, "s1", "drain")]),
        ({"s1": "OO", "s2": "HH", "s3": "HH", "s4": "HH", "s5": "HH"}, []),
        ({"s1": "OOHO", "s2": "HHHH", "s3": "HHHH", "s4": "HHHH", "s5": "HHHH"}, []),
        (
            {"s1": "OBOBO", "s2": "HHHHH", "s3": "HHHHH", "s4": "HHHHH", "s5": "HHHHH"},
            [(4, "s1", "drain")],
        ),
        ({"s1": "FFF", "s2": "HHH", "s3": "HHH", "s4": "HHH", "s5": "HHH"}, [(2, "s1", "drain")]),
        (
            {"s1": "OF-O", "s2": "HHHH", "s3": "HHHH", "s4": "HHHH", "s5": "HHHH"},
            [(3, "s1", "drain")],
        ),
        ({"s1": "BBBBBB", "s2": "HHHHHH", "s3": "HHHHHH", "s4": "HHHHHH", "s5": "HHHHHH"}, []),
    ],
    ids=[
        "fall-3",
        "only-2",
        "healthy-resets",
        "band-keeps-progress",
        "failed-counts",
        "missing-sample-waits",
        "band-never-drains",
    ],
)
def test_fall(script: dict[str, str], expected: list[tuple[int, str, str]]) -> None:
    """fall consecutive bad samples drain; a healthy one resets; band samples do neither."""
    sim = Sim(pool())
    assert acted(sim.run(script)) == expected


def test_drain_reason_carries_evidence() -> None:
    """A drain says which rule fired and carries the samples' evidence."""
    sim = Sim(pool())
    decisions = sim.run({"s1": "OOO", "s2": "HHH", "s3": "HHH", "s4": "HHH", "s5": "HHH"})
    (action,) = decisions[-1].actions
    assert action.reason.rule is Rule.FALL
    assert action.reason.evidence["bad"] == 3
    assert action.reason.evidence["signals"] == {"latency_ms": 900.0}
    assert "latency_ms 900 >= 500" in action.reason.message
    assert decisions[-1].desired[S1].admin is AdminState.DRAIN


def test_restore_waits_for_min_drain_and_rise() -> None:
    """A drained server returns after rise healthy samples, not before min_drain."""
    sim = Sim(pool(min_drain=5.0, rise=2))
    others = {f"s{i}": "H" for i in range(2, 6)}
    for _ in range(3):
        sim.round({"s1": "O", **others})
    drained_at = sim.now
    restores = []
    for _ in range(8):
        d = sim.round({"s1": "H", **others})
        restores += [(sim.now - drained_at, a) for a in d.actions]
        if d.blocked:
            assert d.blocked[0].reason.rule is Rule.HOLD
    assert len(restores) == 1
    held, action = restores[0]
    assert held == 5.0
    assert action.kind is ActionKind.RESTORE and action.reason.rule is Rule.RISE


def test_band_after_drain_does_not_restore() -> None:
    """Samples in the band keep a drained server out however long they last."""
    sim = Sim(pool(min_drain=1.0))
    others = {f"s{i}": "H" for i in range(2, 6)}
    sim.run({"s1": "OOO", **{k: "HHH" for k in others}})
    decisions = sim.run({"s1": "B" * 20, **{k: "H" * 20 for k in others}})
    assert acted(decisions) == []


def test_flap_backoff_grows_and_is_capped() -> None:
    """Each quick re-drain doubles the hold time, up to flap_max_hold."""
    sim = Sim(pool(min_drain=5.0, rise=1, flap_window=100.0, flap_max_hold=12.0))
    others = {f"s{i}": "H" for i in range(2, 6)}
    holds = []
    for _ in range(4):
        for _ in range(3):
            d = sim.round({"s1": "O", **others})
        holds.append(d.actions[0].reason.evidence["hold_s"])
        while not any(
            a.kind is ActionKind.RESTORE for a in sim.round({"s1": "H", **others}).actions
        ):
            pass
    assert holds == [5.0, 10.0, 12.0, 12.0]


def test_flap_level_decays_after_quiet_windows() -> None:
    """A server that stayed in service for flap windows gets its short hold back."""
    sim = Sim(pool(min_drain=5.0, rise=1, flap_window=10.0, flap_max_hold=100.0))
    others = {f"s{i}": "H" for i in range(2, 6)}
    sim.run({"s1": "OOO", **{k: "HHH" for k in others}})
    sim.run({"s1": "H" * 6, **{k: "H" * 6 for k in others}})  # restored at round 5
    d = sim.run({"s1": "OOO", **{k: "HHH" for k in others}})[-1]
    assert d.actions[0].reason.evidence["hold_s"] == 10.0
    sim.run({"s1": "H" * 11, **{k: "H" * 11 for k in others}})  # restored after 10 s hold
    sim.run({"s1": "H" * 25, **{k: "H" * 25 for k in others}})  # two quiet windows
    d = sim.run({"s1": "OOO", **{k: "HHH" for k in others}})[-1]
    assert d.actions[0].reason.evidence["hold_s"] == 5.0


@pytest.mark.parametrize(
    ("size", "max_drained", "min_in_service", "bad", "allowed"),
    [
        (5, 0.4, 2, 4, 2),
        (5, 0.4, 4, 4, 1),
        (3, 0.67, 1, 3, 2),
        (3, 0.4, 1, 3, 1),
        (2, 0.5, 1, 2, 1),
        (2, 0.4, 1, 2, 0),
        (1, 1.0, 0, 1, 1),
        (1, 1.0, 1, 1, 0),
        (4, 0.5, 2, 4, 2),
        (10, 0.25, 2, 10, 2),
    ],
    ids=lambda v: str(v),
)
def test_caps_on_small_pools(
    size: int, max_drained: float, min_in_service: int, bad: int, allowed: int
) -> None:
    """The cap is computed on the count after the drain, rounded down, and the floor holds."""
    sim = Sim(pool(max_drained=max_drained, min_in_service=min_in_service, blind_threshold=1.01))
    names = [f"s{i}" for i in range(1, size + 1)]
    script = {n: ("OOOO" if i < bad else "HHHH") for i, n in enumerate(names)}
    decisions = sim.run(script)
    drains = [a for d in decisions for a in d.actions if a.kind is ActionKind.DRAIN]
    assert len(drains) == allowed
    blocked = decisions[-1].blocked
    assert len(blocked) == bad - allowed
    assert all(b.reason.rule in (Rule.MAX_DRAINED, Rule.MIN_IN_SERVICE) for b in blocked)


def test_worst_first() -> None:
    """When the cap allows fewer drains than candidates, the most overloaded go first."""
    sim = Sim(pool(max_drained=0.4))
    for _ in range(3):
        sim.now += 1.0
        from lbhealthd.engine import Observation, Settings, decide

        obs = {
            ServerId("api", "s1"): Observation(ok("api/s1", sim.now, latency_ms=600)),
            ServerId("api", "s2"): Observation(failed("api/s2", sim.now)),
            ServerId("api", "s3"): Observation(ok("api/s3", sim.now, latency_ms=2000)),
            ServerId("api", "s4"): Observation(ok("api/s4", sim.now, latency_ms=700)),
            ServerId("api", "s5"): Observation(ok("api/s5", sim.now, latency_ms=10)),
        }
        sim.state, d = decide(sim.state, obs, {}, Settings({"api": sim.pool}), sim.now)
    assert sorted(a.server.server for a in d.actions) == ["s2", "s3"]
    assert sorted(b.server.server for b in d.blocked) == ["s1", "s4"]


def test_external_out_counts_against_the_cap() -> None:
    """A server the LB or an operator already took out uses up the pool's budget."""
    sim = Sim(pool(max_drained=0.4))
    decisions = sim.run(
        {"s1": "OOO", "s2": "OOO", "s3": "HHH", "s4": "HHH", "s5": "HHH"},
        external_out=frozenset({"s5"}),
    )
    assert len([a for a in acted(decisions) if a[2] == "drain"]) == 1


def test_blind_pool_drains_nothing() -> None:
    """When most probes fail at once the daemon is blind and freezes the pool."""
    sim = Sim(pool(blind_threshold=0.8))
    decisions = sim.run({"s1": "FFFFF", "s2": "FFFFF", "s3": "FFFFF", "s4": "FFFFF", "s5": "HHHHH"})
    assert acted(decisions) == []
    assert all(d.blind_pools == {"api"} for d in decisions)
    assert decisions[-1].warnings[0].rule is Rule.BLIND


def test_blind_failures_do_not_count_after_sight_returns() -> None:
    """Failed samples during blindness are no evidence: recovery does not trigger a mass drain."""
    sim = Sim(pool(blind_threshold=0.8))
    sim.run({"s1": "FFFF", "s2": "FFFF", "s3": "FFFF", "s4": "FFFF", "s5": "FFFF"})
    decisions = sim.run({"s1": "F", "s2": "H", "s3": "H", "s4": "H", "s5": "H"})
    assert acted(decisions) == []


def _override(kind: OverrideKind, expires: float | None = None) -> dict[ServerId, Override]:
    return {S1: Override(S1, kind, "disk full", "alice", 0.0, expires)}


def test_manual_drain_wins_and_ends_by_rise() -> None:
    """A drain override takes a healthy server out; when it ends, only health brings it back."""
    sim = Sim(pool(rise=2, min_drain=30.0))
    healthy = {f"s{i}": "H" for i in range(1, 6)}
    d = sim.round(healthy, overrides=_override(OverrideKind.DRAIN))
    assert d.desired[S1].admin is AdminState.DRAIN and d.desired[S1].manual
    assert d.actions[0].reason.rule is Rule.OVERRIDE
    assert "alice" in d.actions[0].reason.message
    d = sim.round(healthy, overrides=_override(OverrideKind.DRAIN))
    assert d.actions == ()
    d = sim.round(healthy)  # override gone; s1 has had 3 healthy samples: back at once
    assert [(a.kind, a.reason.rule) for a in d.actions] == [(ActionKind.RESTORE, Rule.RISE)]


def test_manual_drain_ending_on_a_sick_server_keeps_it_out() -> None:
    """An override ending on an overloaded server leaves it drained by the daemon."""
    sim = Sim(pool(rise=2))
    sick = {"s1": "O", **{f"s{i}": "H" for i in range(2, 6)}}
    sim.round(sick, overrides=_override(OverrideKind.MAINT))
    d = sim.round(sick)
    assert d.desired[S1].admin is AdminState.DRAIN and not d.desired[S1].manual
    assert d.actions == ()


def test_manual_drain_beyond_caps_warns() -> None:
    """An override is obeyed beyond the caps, with a warning."""
    sim = Sim(pool(max_drained=0.2, min_in_service=1))
    names = [f"s{i}" for i in range(1, 6)]
    overrides = {
        ServerId("api", n): Override(ServerId("api", n), OverrideKind.DRAIN, "x", "bob", 0.0)
        for n in names[:3]
    }
    d = sim.round({n: "H" for n in names}, overrides=overrides)
    assert len(d.actions) == 3
    assert [w.rule for w in d.warnings] == [Rule.OVERRIDE_OVER_CAP]


def test_ready_override_blocks_automatic_drain() -> None:
    """A keep-in override stops the daemon from draining, and says so."""
    sim = Sim(pool())
    script = {"s1": "OOOO", **{f"s{i}": "HHHH" for i in range(2, 6)}}
    decisions = sim.run(script, overrides=_override(OverrideKind.READY))
    assert acted(decisions) == []
    assert decisions[-1].blocked[0].reason.rule is Rule.OVERRIDE


def test_ready_override_restores_a_drained_server() -> None:
    """An operator's restore brings back a server the daemon drained, without waiting."""
    sim = Sim(pool(min_drain=600.0))
    sim.run({"s1": "OOO", **{f"s{i}": "HHH" for i in range(2, 6)}})
    d = sim.round(
        {"s1": "O", **{f"s{i}": "H" for i in range(2, 6)}}, overrides=_override(OverrideKind.READY)
    )
    assert [(a.kind, a.reason.rule) for a in d.actions] == [(ActionKind.RESTORE, Rule.OVERRIDE)]


def test_slow_start_ramps_weight() -> None:
    """A restored server's weight fraction ramps from the floor to 1 over slow_start."""
    sim = Sim(pool(slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1))
    others = {f"s{i}": "H" for i in range(2, 6)}
    sim.run({"s1": "OOO", **{k: "HHH" for k in others}})
    d = sim.round({"s1": "H", **others})
    assert d.actions[0].kind is ActionKind.RESTORE
    fractions = [d.desired[S1].weight_fraction]
    for _ in range(11):
        fractions.append(sim.round({"s1": "H", **others}).desired[S1].weight_fraction)
    assert fractions[0] == pytest.approx(0.1)
    assert fractions[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)


OTHERS = {f"s{i}": "H" for i in range(2, 6)}


def test_an_absent_server_in_service_is_remembered_for_the_grace_only() -> None:
    """A server missing from the LB's reads for less than ``absent_grace`` keeps its streak (its
    third bad sample drains it); missing that long, it is forgotten (its bad streak starts
    again from the next sample)."""
    sim = Sim(pool(absent_grace=3.0))
    sim.run({"s1": "OO", **{k: "HH" for k in OTHERS}})
    sim.run({k: "HH" for k in OTHERS})  # s1 missing for 2 s
    assert sim.state.absent == {S1: sim.now - 1.0}
    d = sim.round({"s1": "O", **OTHERS})
    assert [(a.server, a.kind) for a in d.actions] == [(S1, ActionKind.DRAIN)]
    assert sim.state.absent == {}

    sim = Sim(pool(absent_grace=3.0))
    sim.run({"s1": "OO", **{k: "HH" for k in OTHERS}})
    sim.run({k: "HHHH" for k in OTHERS})  # missing from 4 reads, the first 3 s ago
    assert S1 not in sim.state.servers and sim.state.absent == {}
    d = sim.round({"s1": "O", **OTHERS})
    assert not d.actions and sim.state.servers[S1].bad == 1


def test_a_drained_server_missing_from_reads_resumes_its_drain() -> None:
    """A server the daemon drained, left out of the LB's reads for longer than the grace, is
    remembered as long as it is held: back and still overloaded, it stays drained; healthy, it
    is restored by rise once its hold is over, as any drain."""
    sim = Sim(pool(absent_grace=1.0, min_drain=10.0, rise=2))
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    assert sim.state.servers[S1].phase is Phase.DRAINED
    d = sim.run({k: "HHHHH" for k in OTHERS})[-1]  # missing for 5 s
    assert S1 not in d.desired and sim.state.servers[S1].phase is Phase.DRAINED
    decisions = sim.run({"s1": "OO", **{k: "HH" for k in OTHERS}})
    assert all(d.desired[S1].admin is AdminState.DRAIN and not d.actions for d in decisions)
    decisions = sim.run({"s1": "HHHHH", **{k: "HHHHH" for k in OTHERS}})
    assert acted(decisions) == [(2, "s1", "restore")]  # the hold ended 10 s after the drain
    assert decisions[2].actions[0].reason.rule is Rule.RISE


def test_a_ramping_server_missing_from_reads_resumes_its_ramp() -> None:
    """A server ramping up when it went missing comes back at the share it had, not at full
    weight: the time it was missing is not healthy time."""
    sim = Sim(pool(absent_grace=1.0, slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1))
    _restored(sim, OTHERS)
    share = sim.state.servers[S1].fraction
    assert share < 0.2
    sim.run({k: "HHHHHHHHHHHH" for k in OTHERS})  # missing for 12 s, longer than slow_start
    d = sim.round({"s1": "H", **OTHERS})
    assert share < d.desired[S1].weight_fraction < 0.3


def test_same_sample_counts_once() -> None:
    """A sample seen again in the next round does not extend a streak."""
    sim = Sim(pool())
    from lbhealthd.engine import Observation, Settings, decide

    sample = ok(S1, 1.0, latency_ms=900)
    state = sim.state
    for now in (2.0, 3.0, 4.0, 5.0):
        state, _ = decide(state, {S1: Observation(sample)}, {}, Settings({"api": sim.pool}), now)
    assert state.servers[S1].bad == 1


def _restored(sim: Sim, others: dict[str, str]) -> None:
    sim.run({"s1": "OOO", **{k: "HHH" for k in others}})
    while not any(a.kind is ActionKind.RESTORE for a in sim.round({"s1": "H", **others}).actions):
        pass


def test_ramp_holds_in_the_band() -> None:
    """A ramping server's weight share does not grow while its samples are in the band."""
    sim = Sim(pool(slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1))
    others = {f"s{i}": "H" for i in range(2, 6)}
    _restored(sim, others)
    held = sim.round({"s1": "B", **others}).desired[S1].weight_fraction
    for _ in range(5):
        assert sim.round({"s1": "B", **others}).desired[S1].weight_fraction == held
    assert sim.round({"s1": "H", **others}).desired[S1].weight_fraction > held


def test_overload_while_ramping_steps_down_then_drains_at_the_floor() -> None:
    """Overloaded while ramping: the share halves instead of a drain; at the floor it drains."""
    sim = Sim(pool(slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1, fall=3))
    others = {f"s{i}": "H" for i in range(2, 6)}
    _restored(sim, others)
    for _ in range(6):
        sim.round({"s1": "H", **others})
    before = sim.state.servers[S1].fraction
    assert before > 0.4
    d = sim.round({"s1": "O", **others})
    assert [(a.kind, a.reason.rule) for a in d.actions] == [(ActionKind.STEP_DOWN, Rule.STEP_DOWN)]
    assert d.desired[S1].weight_fraction == pytest.approx(before / 2)
    assert d.desired[S1].admin is AdminState.READY
    kinds = []
    for _ in range(8):
        kinds += [a.kind for a in sim.round({"s1": "O", **others}).actions]
    assert ActionKind.STEP_DOWN in kinds and kinds[-1] is ActionKind.DRAIN
    assert kinds.count(ActionKind.DRAIN) == 1
