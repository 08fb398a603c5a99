"""The pure engine's later rules: slow-start weights, hands off, starvation, and what of its
memory survives a restart."""

from __future__ import annotations

import pytest

from lbhealthd.engine import (
    Clamped,
    EngineState,
    ServerState,
    Settings,
    forget,
    from_persisted,
    slowstart,
    to_persisted,
)
from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.settings import Marks, PoolSettings
from lbhealthd.model import (
    ActionKind,
    AdminState,
    ByHand,
    Override,
    OverrideKind,
    Rule,
    ServerId,
)
from tests.engine_sim import Sim, acted
from tests.test_engine import pool

S1 = ServerId("api", "s1")
OTHERS = {f"s{i}": "H" for i in range(2, 6)}
SETTINGS = Settings({"api": pool()})


def drained(sim: Sim) -> None:
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    assert sim.state.servers[S1].phase is Phase.DRAINED


# --- rule 6: the slow-start share as a weight ------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "full", "reference", "expected"),
    [
        (1.0, 100, 100.0, None),  # done: its full weight
        (0.1, 100, 100.0, 10),  # the floor share of its weight
        (0.1, 100, 1.0, 1),  # never above the others' median at the start
        (0.55, 100, 1.0, 10),  # geometric: half way from 1 to 100 is 10
        (0.1, 100, None, 10),  # alone in its pool: its own weight is the reference
        (0.5, 0, 10.0, None),  # weight 0 stays 0
    ],
)
def test_slow_start_weight(
    fraction: float, full: int, reference: float | None, expected: int | None
) -> None:
    assert slowstart.weight(fraction, full, reference, 0.1) == expected


def test_reference_weight_is_the_median_of_positive_weights() -> None:
    assert slowstart.reference_weight([100, 100, 1, 1, 1]) == 1.0
    assert slowstart.reference_weight([1, 3, 0]) == 2.0
    assert slowstart.reference_weight([0]) is None


def test_a_restored_server_starts_at_the_others_weight() -> None:
    """The postmortem's pool: a server weighted 100 among servers weighted 1 comes back at 1
    and ramps geometrically to 100."""
    sim = Sim(pool(slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1))
    weights = {"s1": (100, 100), "s2": (100, 100), **{f"s{i}": (1, 1) for i in (3, 4, 5)}}
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}}, weights=weights)
    seen = []
    for _ in range(15):
        d = sim.round({"s1": "H", **OTHERS}, weights=weights)
        seen.append(d.desired[S1].weight)
    ramp = [w for w in seen if w is not None]
    assert ramp[0] == 1 and ramp == sorted(ramp) and len(set(ramp)) > 5
    assert seen[-1] is None  # full weight: nothing held


# --- rule 7: hands off ------------------------------------------------------------------------


def test_a_server_put_back_by_hand_is_released_and_kept_in() -> None:
    sim = Sim(pool(fall=1))
    drained(sim)
    d = sim.round({"s1": "O", **OTHERS}, hand={"s1": ByHand(AdminState.READY)})
    (released,) = d.released
    assert (released.server, released.keep_in, released.reason.rule) == (
        S1,
        True,
        Rule.HAND_CHANGE,
    )
    assert d.desired[S1].admin is AdminState.READY
    assert not [a for a in d.actions if a.server == S1]  # not drained again at once
    # Without the hand change the same overloaded sample drains it at fall 1.
    other = Sim(pool(fall=1))
    other.round({"s1": "H", **OTHERS})
    assert [a.kind for a in other.round({"s1": "O", **OTHERS}).actions] == [ActionKind.DRAIN]


def test_a_server_set_to_maint_by_hand_is_released_not_kept_in() -> None:
    sim = Sim(pool())
    drained(sim)
    d = sim.round({"s1": "H", **OTHERS}, hand={"s1": ByHand(AdminState.MAINT)}, external_out={"s1"})
    assert [(r.server, r.keep_in) for r in d.released] == [(S1, False)]
    assert sim.state.servers[S1].phase is Phase.IN_SERVICE
    assert d.desired[S1].admin is AdminState.READY  # nothing lbhealthd will send: not its own


def test_a_weight_changed_by_hand_ends_the_ramp() -> None:
    sim = Sim(pool(slow_start=10.0, slow_start_floor=0.1, min_drain=1.0, rise=1))
    drained(sim)
    d = sim.round({"s1": "H", **OTHERS})
    assert d.desired[S1].weight_fraction < 1.0
    d = sim.round({"s1": "H", **OTHERS}, hand={"s1": ByHand(None, weight=True)})
    assert [r.reason.rule for r in d.released] == [Rule.HAND_CHANGE]
    assert d.desired[S1].weight_fraction == 1.0


# --- rule 8: starved --------------------------------------------------------------------------


def test_a_frozen_round_drains_nothing_and_says_why() -> None:
    sim = Sim(pool())
    sim.run({"s1": "OO", **{k: "HH" for k in OTHERS}})
    d = sim.round({"s1": "O", **OTHERS}, frozen=True)
    assert not d.actions
    assert sim.state.servers[S1].bad == 2  # the frozen round's sample counted for nothing
    d = sim.round({"s1": "O", **OTHERS}, frozen=True)
    assert not d.actions
    d = sim.round({"s1": "O", **OTHERS})
    assert [a.kind for a in d.actions] == [ActionKind.DRAIN]


def test_a_frozen_round_blocks_a_drain_the_caps_just_freed() -> None:
    """A candidate blocked by the caps is not drained in a frozen round when room appears."""
    sim = Sim(pool(max_drained=0.4, min_in_service=1))
    script = {"s1": "OOO", "s2": "OOO", "s3": "OOO", "s4": "HHH", "s5": "HHH"}
    sim.run(script)
    assert {s.server for s, st in sim.state.servers.items() if st.phase is Phase.DRAINED} == {
        "s1",
        "s2",
    }
    over = Override(ServerId("api", "s1"), OverrideKind.READY, "back", "alice", 0.0, None)
    d = sim.round(
        {"s1": "-", "s2": "O", "s3": "O", "s4": "H", "s5": "H"}, {over.server: over}, frozen=True
    )
    (blocked,) = [b for b in d.blocked if b.server.server == "s3"]
    assert blocked.reason.rule is Rule.STARVED
    d = sim.round({"s1": "-", "s2": "O", "s3": "O", "s4": "H", "s5": "H"}, {over.server: over})
    assert ("s3", ActionKind.DRAIN) in [(a.server.server, a.kind) for a in d.actions]


def test_a_frozen_round_blocks_a_restore_whose_hold_ended() -> None:
    sim = Sim(pool(min_drain=2.0, rise=1))
    drained(sim)
    sim.round({"s1": "H", **OTHERS})  # healthy, held
    d = sim.round({"s1": "H", **OTHERS}, frozen=True, step=5.0)
    assert [(b.kind, b.reason.rule) for b in d.blocked] == [(ActionKind.RESTORE, Rule.STARVED)]
    d = sim.round({"s1": "H", **OTHERS})
    assert [a.kind for a in d.actions] == [ActionKind.RESTORE]


def test_overrides_apply_in_a_frozen_round() -> None:
    sim = Sim(pool())
    over = Override(S1, OverrideKind.DRAIN, "deploy", "alice", 0.0, None)
    d = sim.round({"s1": "H", **OTHERS}, {S1: over}, frozen=True)
    assert [(a.kind, a.reason.rule) for a in d.actions] == [(ActionKind.DRAIN, Rule.OVERRIDE)]


# --- rule 10: an HA pair listing different servers ------------------------------------------


def test_an_inconsistent_pool_drains_and_restores_nothing_and_says_why() -> None:
    """s6 is listed by one endpoint only. Two of s2-s4 overloaded and s1 healthy after its
    drain: nothing is drained or restored (rule inconsistent), with one warning naming s6.
    Samples still count: once the endpoints agree, the drains due and s1's restore happen."""
    sim = Sim(pool(min_drain=1.0, rise=1))
    drained(sim)
    script = {"s1": "HHH", "s2": "OOO", "s3": "OOO", "s4": "HHH", "s5": "HHH", "s6": "HHH"}
    d = sim.run(script, partial=frozenset({"s6"}))[-1]
    assert not d.actions and d.inconsistent_pools == {"api"}
    assert sorted((b.server.server, b.kind.value, b.reason.rule) for b in d.blocked) == [
        ("s1", "restore", Rule.INCONSISTENT),
        ("s2", "drain", Rule.INCONSISTENT),
        ("s3", "drain", Rule.INCONSISTENT),
    ]
    (warning,) = d.warnings
    assert (warning.rule, warning.evidence["servers"]) == (Rule.INCONSISTENT, ["s6"])
    d = sim.round({"s1": "H", "s2": "O", "s3": "O", "s4": "H", "s5": "H"})
    assert not d.warnings and d.inconsistent_pools == frozenset()
    assert sorted((a.server.server, a.kind.value) for a in d.actions) == [
        ("s1", "restore"),
        ("s2", "drain"),
        ("s3", "drain"),
    ]


def test_overrides_apply_in_an_inconsistent_pool_and_caps_count_the_listed_servers() -> None:
    """A drain override still takes a server out. The over-cap warning counts only what every
    endpoint lists: three of five out is beyond 40 %, however many servers one endpoint adds
    (three of ten would not be)."""
    sim = Sim(pool(max_drained=0.4, min_in_service=1))
    names = [f"s{i}" for i in range(1, 6)] + [f"t{i}" for i in range(1, 6)]
    overrides = {
        ServerId("api", n): Override(ServerId("api", n), OverrideKind.DRAIN, "x", "alice", 0.0)
        for n in ("s1", "s2", "s3")
    }
    codes = dict.fromkeys(names, "H")
    d = sim.round(codes, overrides, partial=frozenset(n for n in names if n.startswith("t")))
    assert sorted(a.server.server for a in d.actions) == ["s1", "s2", "s3"]
    over = [w for w in d.warnings if w.rule is Rule.OVERRIDE_OVER_CAP]
    assert [(w.evidence["pool_size"], w.evidence["out"]) for w in over] == [(5, 3)]


# --- memory across a restart ------------------------------------------------------------------


def test_drains_and_flap_memory_survive_a_restart() -> None:
    sim = Sim(pool(slow_start=10.0))
    drained(sim)
    before = sim.state.servers[S1]
    data = to_persisted(sim.state, now=sim.now, wall=5000.0)
    state, ignored, clamped = from_persisted(
        data, {S1: 4990.0}, {}, now=50.0, wall=5000.0, settings=SETTINGS
    )
    after = state.servers[S1]
    assert ignored == [] and clamped == []
    assert after.phase is Phase.DRAINED
    assert after.hold == before.hold
    assert after.drained_at == pytest.approx(50.0 - (sim.now - before.drained_at))  # type: ignore[operator]


def test_a_remembered_drain_the_writer_no_longer_holds_is_in_service() -> None:
    sim = Sim(pool())
    drained(sim)
    data = to_persisted(sim.state, now=sim.now, wall=5000.0)
    state, _, _ = from_persisted(data, {}, {}, now=50.0, wall=5000.0, settings=SETTINGS)
    assert state.servers[S1].phase is Phase.IN_SERVICE


def test_a_drain_the_engine_never_saw_is_out_until_rise() -> None:
    """Made by the on-call command while the daemon was down: held out, unknown to the data."""
    over = Override(S1, OverrideKind.MAINT, "disk", "bob", 0.0, None)
    state, _, _ = from_persisted(
        {}, {S1: 4990.0}, {S1: over}, now=50.0, wall=5000.0, settings=SETTINGS
    )
    assert (state.servers[S1].phase, state.servers[S1].manual) == (
        Phase.MANUAL,
        OverrideKind.MAINT,
    )
    assert state.servers[S1].drained_at == pytest.approx(40.0)


@pytest.mark.parametrize(
    "data",
    [
        {"api/s1": {"phase": "nonsense"}},
        {"api/s1": "not a mapping"},
        {"no-slash": {"phase": "drained"}},
        {"api/s1": {"phase": "drained", "hold": "long"}},
    ],
)
def test_damaged_entries_are_ignored_and_named(data: dict[str, object]) -> None:
    state, ignored, _ = from_persisted(data, {}, {}, now=0.0, wall=0.0, settings=SETTINGS)
    assert ignored == list(data)
    assert state.servers == {}


def test_damaged_data_as_a_whole_is_ignored() -> None:
    state, ignored, _ = from_persisted(["a", "list"], {}, {}, now=0.0, wall=0.0, settings=SETTINGS)
    assert (state.servers, ignored) == ({}, [])


WALL = 5000.0  # the wall clock at the restart; the engine's clock then reads 1000 (Sim's)


def restarted(
    entry: dict[str, object], held_since: float | None = None, ps: PoolSettings | None = None
) -> tuple[Sim, list[Clamped]]:
    """A Sim started from the remembered ``entry`` of s1 (held out by the writer since
    ``held_since``, wall clock), and what was clamped on the way."""
    ps = ps or pool()
    held = {} if held_since is None else {S1: held_since}
    state, ignored, clamped = from_persisted(
        {"api/s1": entry}, held, {}, now=1000.0, wall=WALL, settings=Settings({"api": ps})
    )
    assert ignored == []
    return Sim(ps, now=1000.0, state=state), clamped


def healthy(rounds: int) -> dict[str, str]:
    return {"s1": "H" * rounds, **{k: "H" * rounds for k in OTHERS}}


def test_a_drain_time_from_the_future_is_clamped_to_now() -> None:
    """drained_at a day ahead would hold the server out a day past its hold: it is taken as
    now, said so, and the server comes back once its hold (5 s) has passed, not before."""
    sim, clamped = restarted(
        {"phase": "drained", "drained_at": WALL + 86400, "hold": 5.0}, held_since=WALL - 10
    )
    assert clamped == [Clamped("api/s1", "drained_at", WALL + 86400, WALL)]
    assert acted(sim.run(healthy(8))) == [(4, "s1", "restore")]


def test_a_drain_time_in_the_past_is_kept() -> None:
    sim, clamped = restarted(
        {"phase": "drained", "drained_at": WALL - 3, "hold": 5.0}, held_since=WALL - 10
    )
    assert clamped == []
    assert acted(sim.run(healthy(8))) == [(1, "s1", "restore")]


def test_a_hold_beyond_flap_max_hold_is_clamped_to_it() -> None:
    """A day-long hold in a pool whose holds stop at 40 s lasts 40 s."""
    sim, clamped = restarted(
        {"phase": "drained", "drained_at": WALL - 1, "hold": 86400.0}, held_since=WALL - 10
    )
    assert clamped == [Clamped("api/s1", "hold", 86400.0, 40.0)]
    assert acted(sim.run(healthy(45))) == [(38, "s1", "restore")]


def test_a_drain_remembered_without_its_time_is_out_since_the_writer_says() -> None:
    """A drain remembered without a usable drained_at would never have been out long enough:
    the time the LB writer holds it out since is used."""
    sim, clamped = restarted({"phase": "drained", "hold": 5.0}, held_since=WALL - 3)
    assert clamped == [Clamped("api/s1", "drained_at", None, WALL - 3)]
    assert acted(sim.run(healthy(4))) == [(1, "s1", "restore")]


@pytest.mark.parametrize("stored", ["tomorrow", True, float("inf"), -float("inf"), 10**400])
def test_a_remembered_time_that_is_no_finite_number_is_replaced(stored: object) -> None:
    """A drain's start that is no usable time is the writer's; a restore time is dropped;
    both are reported, and the server is restored on time."""
    sim, clamped = restarted(
        {"phase": "drained", "drained_at": stored, "hold": 5.0, "restored_at": stored},
        held_since=WALL - 3,
    )
    assert clamped == [
        Clamped("api/s1", "drained_at", stored, WALL - 3),
        Clamped("api/s1", "restored_at", stored, None),
    ]
    assert acted(sim.run(healthy(4))) == [(1, "s1", "restore")]
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    assert sim.state.servers[S1].phase is Phase.DRAINED


def test_a_restore_time_from_the_future_is_clamped_to_now() -> None:
    """restored_at a day ahead would count every drain for a day as a flap: taken as now, two
    flap windows in service take the flap level from 1 back to 0, so the next hold is 5 s."""
    sim, clamped = restarted({"phase": "in_service", "flap_level": 1, "restored_at": WALL + 86400})
    assert clamped == [Clamped("api/s1", "restored_at", WALL + 86400, WALL)]
    sim.round({"s1": "H", **OTHERS}, step=120.0)
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    st = sim.state.servers[S1]
    assert (st.phase, st.flap_level, st.hold) == (Phase.DRAINED, 0, 5.0)


def test_a_flap_level_beyond_any_hold_is_held_at_flap_max_hold() -> None:
    """A flap level so high that min_drain × flap_backoff^n overflows a float is held for
    flap_max_hold, like any level past it; the round does not fail."""
    sim, _ = restarted({"phase": "in_service", "flap_level": 10**6, "restored_at": WALL - 1})
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    st = sim.state.servers[S1]
    assert (st.phase, st.hold) == (Phase.DRAINED, 40.0)


def test_forget_keeps_flap_memory_and_drops_the_phase() -> None:
    state = EngineState({S1: ServerState(phase=Phase.DRAINED, bad=4, flap_level=2)})
    st = forget(state, [S1, ServerId("api", "gone")]).servers[S1]
    assert (st.phase, st.bad, st.flap_level) == (Phase.IN_SERVICE, 0, 2)


def test_judging_a_sample_keeps_every_other_field() -> None:
    """ServerState.judged builds the tuple field by field: a field added to the class and not
    to judged() makes this fail."""
    from lbhealthd.engine.verdict import Verdict

    st = ServerState(
        Phase.DRAINED,
        *(1, 2, 3.0, Verdict.BAND, 0.5, 4.0, 5.0, 6, 7.0, OverrideKind.MAINT, 0.8, 9.0, 10.0),
    )
    assert len(set(st)) == len(ServerState._fields)  # every field distinct, so a swap shows
    assert st.judged(10, 11, 12.0, Verdict.HEALTHY, 0.1) == st._replace(
        bad=10, good=11, last_sample_at=12.0, verdict=Verdict.HEALTHY, ratio=0.1
    )


# --- fast confirmation: which samples are worth confirming soon -------------------------------


@pytest.mark.parametrize(
    ("phase", "code", "expected"),
    [
        (None, "O", True),  # a server the engine has not seen yet is in service
        (Phase.IN_SERVICE, "O", True),
        (Phase.IN_SERVICE, "F", True),
        (Phase.IN_SERVICE, "H", False),
        (Phase.IN_SERVICE, "B", False),
        (Phase.DRAINED, "H", True),
        (Phase.DRAINED, "O", False),
        (Phase.DRAINED, "B", False),
        (Phase.MANUAL, "H", False),
        (Phase.MANUAL, "O", False),
    ],
)
def test_toward_transition(phase: Phase | None, code: str, expected: bool) -> None:
    from lbhealthd.engine import toward_transition
    from tests.engine_sim import sample_for

    st = None if phase is None else ServerState(phase=phase)
    sample = sample_for(code, S1, 1.0)
    assert sample is not None
    assert toward_transition(st, sample, pool()) is expected


@pytest.mark.parametrize(
    ("state", "code", "expected"),
    [
        (ServerState(bad=2), "H", True),  # the bad streak ends
        (ServerState(bad=0), "H", False),  # nothing under way
        (ServerState(bad=2), "B", False),  # the band changes no streak
        (ServerState(phase=Phase.DRAINED, good=1), "O", True),
        (ServerState(phase=Phase.DRAINED, good=1), "F", True),
        (ServerState(phase=Phase.DRAINED, good=0), "O", False),
        (ServerState(phase=Phase.MANUAL, good=1), "O", False),
        (None, "H", False),
    ],
)
def test_breaks_streak(state: ServerState | None, code: str, expected: bool) -> None:
    from lbhealthd.engine import breaks_streak
    from tests.engine_sim import sample_for

    sample = sample_for(code, S1, 1.0)
    assert sample is not None
    assert breaks_streak(state, sample, pool()) is expected


# --- rule 2: the LB's counters as samples of their own ---------------------------------------

LB_MARKS = {"latency_ms": Marks(500, 200), "lb_queue": Marks(10, 1)}
LB_MARKED = pool(marks=LB_MARKS)


def test_lb_samples_over_their_mark_drain_and_quiet_ones_are_no_evidence() -> None:
    """Three LB samples over the queue's mark drain a server with no new probe sample; quiet
    ones between them neither reset the streak nor count as healthy."""
    sim = Sim(LB_MARKED)
    sim.run({"s1": "H", **OTHERS})
    sim.round({"s1": "-", **OTHERS}, lb={"s1": 25})
    sim.round({"s1": "-", **OTHERS}, lb={"s1": 0})
    sim.round({"s1": "-", **OTHERS}, lb={"s1": 25})
    assert sim.state.servers[S1].bad == 2 and sim.state.servers[S1].phase is Phase.IN_SERVICE
    d = sim.round({"s1": "-", **OTHERS}, lb={"s1": 30})
    (drain,) = d.actions
    assert (drain.server, drain.kind, drain.reason.rule) == (S1, ActionKind.DRAIN, Rule.FALL)
    assert "lb_queue 30 >= 10" in drain.reason.message


def test_an_lb_sample_over_its_mark_resets_a_drained_servers_healthy_streak() -> None:
    sim = Sim(pool(marks=LB_MARKS, min_drain=1.0, rise=2))
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    assert sim.state.servers[S1].phase is Phase.DRAINED
    sim.round({"s1": "H", **OTHERS}, step=5.0)
    sim.round({"s1": "-", **OTHERS}, lb={"s1": 25})
    d = sim.round({"s1": "H", **OTHERS})
    assert d.actions == () and sim.state.servers[S1].good == 1
    d = sim.round({"s1": "H", **OTHERS})
    assert [(a.server, a.kind) for a in d.actions] == [(S1, ActionKind.RESTORE)]


def test_lb_samples_count_while_starved_but_drain_nothing() -> None:
    """The LB measured its counters, not the starved daemon: they still count, and the
    drain they call for is blocked by the freeze until it lifts."""
    sim = Sim(LB_MARKED)
    sim.run({"s1": "H", **OTHERS})
    for _ in range(3):
        d = sim.round({"s1": "-", **OTHERS}, lb={"s1": 25}, frozen=True)
    assert [(b.server, b.reason.rule) for b in d.blocked] == [(S1, Rule.STARVED)]
    d = sim.round({"s1": "-", **OTHERS})
    assert [(a.server, a.kind) for a in d.actions] == [(S1, ActionKind.DRAIN)]


def test_an_lb_sample_over_its_mark_steps_a_ramping_server_down() -> None:
    sim = Sim(pool(marks=LB_MARKS, min_drain=1.0, rise=1, slow_start=30.0))
    sim.run({"s1": "OOO", **{k: "HHH" for k in OTHERS}})
    sim.round({"s1": "H", **OTHERS}, step=5.0)  # restored, at the floor
    for _ in range(5):
        sim.round({"s1": "H", **OTHERS}, step=3.0)  # ramping up
    share = sim.state.servers[S1].fraction
    assert 0.1 < share < 1.0
    d = sim.round({"s1": "-", **OTHERS}, lb={"s1": 25})
    assert [(a.server, a.kind) for a in d.actions] == [(S1, ActionKind.STEP_DOWN)]
    assert sim.state.servers[S1].fraction == pytest.approx(max(0.1, share / 2))


@pytest.mark.parametrize(
    ("probe_interval", "share"), [(1.0, 0.1 + 0.09 * 2), (None, 0.1 + 0.09 * 9)]
)
def test_a_gap_without_samples_is_no_healthy_time_in_a_slow_start(
    probe_interval: float | None, share: float
) -> None:
    """Restored at the floor (10 %) with a 10 s slow start, then 8 s without a sample (probes
    not completing, a starved daemon): the next healthy sample vouches for two probe intervals
    of health, not for the whole gap. Without a probe interval the gap counts (the twin)."""
    sim = Sim(pool(min_drain=1.0, rise=1, slow_start=10.0, probe_interval=probe_interval))
    drained(sim)
    sim.round({"s1": "H", **OTHERS}, step=2.0)
    assert sim.state.servers[S1].phase is Phase.IN_SERVICE
    assert sim.state.servers[S1].fraction == pytest.approx(0.1)
    for _ in range(8):
        sim.round({"s1": "-", **OTHERS})
    sim.round({"s1": "H", **OTHERS})
    assert sim.state.servers[S1].fraction == pytest.approx(share)


def test_a_reload_that_lowers_flap_max_hold_shortens_a_running_hold() -> None:
    """A drain held 40 s (flap_max_hold 40): after a reload to flap_max_hold 5, the server
    comes back after 5 s, as it would after a restart; without the reload it waits (the twin)."""
    for cap, restored_after in ((5.0, True), (40.0, False)):
        sim = Sim(pool(min_drain=40.0, flap_max_hold=40.0, rise=1))
        drained(sim)
        assert sim.state.servers[S1].hold == 40.0
        sim.pool = pool(min_drain=min(40.0, cap), flap_max_hold=cap, rise=1)
        for _ in range(6):
            d = sim.round({"s1": "H", **OTHERS})
            if any(a.kind is ActionKind.RESTORE for a in d.actions):
                break
        assert (sim.state.servers[S1].phase is Phase.IN_SERVICE) is restored_after
