"""Safety invariants of the engine over random pools and random sample sequences."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lbhealthd.engine import EngineState, Observation, PoolSettings, Settings, decide
from lbhealthd.engine.settings import Marks
from lbhealthd.model import ActionKind, AdminState, Rule, ServerId
from lbhealthd.testing import failed, ok
from tests.engine_sim import Sim

CODES = "HOBF-"


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PoolSettings, dict[str, str], frozenset[str]]:
    size = draw(st.integers(1, 50))
    rounds = draw(st.integers(1, 24))
    settings = PoolSettings(
        name="api",
        fall=draw(st.integers(1, 4)),
        rise=draw(st.integers(1, 4)),
        min_drain=draw(st.sampled_from([0.0, 1.0, 2.5, 5.0])),
        flap_backoff=draw(st.sampled_from([1.0, 2.0, 3.0])),
        flap_window=draw(st.sampled_from([1.0, 10.0])),
        flap_max_hold=20.0,
        slow_start=draw(st.sampled_from([0.0, 3.0])),
        max_drained=draw(st.sampled_from([0.0, 0.1, 0.25, 0.4, 0.5, 0.67, 1.0])),
        min_in_service=draw(st.integers(0, 5)),
        blind_threshold=draw(st.sampled_from([0.5, 0.8, 1.0, 1.01])),
    )
    # Correlated scripts: most servers share a few patterns, as real pools do.
    patterns = draw(
        st.lists(st.text(CODES, min_size=rounds, max_size=rounds), min_size=1, max_size=4)
    )
    script = {f"s{i}": patterns[draw(st.integers(0, len(patterns) - 1))] for i in range(size)}
    external = frozenset(draw(st.sets(st.sampled_from(sorted(script)), max_size=2)))
    return settings, script, external


@given(scenarios())
def test_safety_invariants(scenario: tuple[PoolSettings, dict[str, str], frozenset[str]]) -> None:
    """Automatic drains respect the caps, wait for fall bad samples, and hold min_drain."""
    settings, script, external = scenario
    sim = Sim(settings)
    size = len(script)
    max_out = math.floor(settings.max_drained * size + 1e-9)
    bad_since_healthy = dict.fromkeys(script, 0)
    drained_at: dict[str, float] = {}
    rounds = len(next(iter(script.values())))
    for i in range(rounds):
        codes = {name: s[i] for name, s in script.items()}
        d = sim.round(codes, external_out=external)
        for name, code in codes.items():
            if code == "H":
                bad_since_healthy[name] = 0
            elif code == "O" or (code == "F" and not d.blind_pools):
                bad_since_healthy[name] += 1  # while blind, failed probes are no evidence
        out = sum(
            1
            for sid, want in d.desired.items()
            if want.admin is not AdminState.READY or sid.server in external
        )
        drains = [a for a in d.actions if a.kind is ActionKind.DRAIN]
        if drains:
            assert out <= max_out
            assert size - out >= settings.min_in_service
            assert not d.blind_pools
        for a in drains:
            assert a.reason.rule is Rule.FALL
            assert bad_since_healthy[a.server.server] >= settings.fall
            drained_at[a.server.server] = sim.now
        for a in d.actions:
            if a.kind is ActionKind.RESTORE:
                assert a.reason.rule is Rule.RISE
                assert sim.now - drained_at[a.server.server] >= settings.min_drain
                assert bad_since_healthy[a.server.server] == 0


@given(scenarios())
def test_deterministic(scenario: tuple[PoolSettings, dict[str, str], frozenset[str]]) -> None:
    """The same inputs give the same decisions and state."""
    settings, script, external = scenario
    first, second = Sim(settings), Sim(settings)
    assert first.run(script, external_out=external) == second.run(script, external_out=external)
    assert first.state == second.state


# A tenth of the CI profile's examples: each runs the engine twice, and the order of the
# servers is the only thing it varies.
@settings(max_examples=max(1, settings.default.max_examples // 10))
@given(scenarios(), st.randoms(use_true_random=False))
def test_the_order_of_the_servers_does_not_matter(
    scenario: tuple[PoolSettings, dict[str, str], frozenset[str]], rng: random.Random
) -> None:
    """Observations given in any order give the same decisions and state (the engine groups
    servers in the caller's order and sorts only what it reports)."""
    settings, script, external = scenario
    names = list(script)
    rng.shuffle(names)
    shuffled = {name: script[name] for name in names}
    first, second = Sim(settings), Sim(settings)
    assert first.run(script, external_out=external) == second.run(shuffled, external_out=external)
    assert first.state == second.state


@given(scenarios())
def test_every_server_has_a_desired_state(
    scenario: tuple[PoolSettings, dict[str, str], frozenset[str]],
) -> None:
    """Every observed server gets a desired state with a weight fraction in (0, 1]."""
    settings, script, external = scenario
    for d in Sim(settings).run(script, external_out=external):
        assert set(d.desired) == {ServerId("api", n) for n in script}
        assert all(0.0 < w.weight_fraction <= 1.0 for w in d.desired.values())


# --- capacity_signal -------------------------------------------------------------------------

CPU = [None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.85, 0.95, 1.2, 2.0]  # None: a failed probe


@st.composite
def loaded_pools(
    draw: st.DrawFn,
) -> tuple[PoolSettings, dict[str, int], list[dict[str, float | None]], frozenset[str]]:
    size = draw(st.integers(1, 12))
    rounds = draw(st.integers(1, 8))
    settings = PoolSettings(
        name="api",
        marks={"cpu": Marks(high=0.9, low=0.6)},
        fall=draw(st.integers(1, 2)),
        rise=1,
        min_drain=0.0,
        slow_start=0.0,
        max_drained=draw(st.sampled_from([0.4, 1.0])),
        min_in_service=draw(st.integers(0, 2)),
        blind_threshold=1.01,
        capacity_signal="cpu",
    )
    names = [f"s{i}" for i in range(size)]
    weights = {n: draw(st.sampled_from([0, 1, 10, 100, 256])) for n in names}
    script = [{n: draw(st.sampled_from(CPU)) for n in names} for _ in range(rounds)]
    external = frozenset(draw(st.sets(st.sampled_from(names), max_size=1)))
    return settings, weights, script, external


@given(loaded_pools())
def test_no_drain_leaves_the_rest_at_or_above_the_high_mark(
    case: tuple[PoolSettings, dict[str, int], list[dict[str, float | None]], frozenset[str]],
) -> None:
    """With capacity_signal set, a round that drains has the load of the servers in rotation
    before it, over the weight of those in rotation after it, below the signal's high mark,
    and every server in rotation before it had a value of the signal."""
    settings, weights, script, external = case
    state = EngineState()
    in_rotation = {n for n in weights if n not in external}
    now = 1000.0
    for cpu in script:
        now += 1.0
        observations = {}
        for name, value in cpu.items():
            sid = ServerId("api", name)
            sample = failed(sid, now) if value is None else ok(sid, now, cpu=value)
            observations[sid] = Observation(
                sample,
                external_out=name in external,
                weight=weights[name],
                full_weight=weights[name],
            )
        state, d = decide(state, observations, {}, Settings({"api": settings}), now)
        after = {
            sid.server
            for sid, want in d.desired.items()
            if want.admin is AdminState.READY and sid.server not in external
        }
        if any(a.kind is ActionKind.DRAIN for a in d.actions):
            values = [cpu[n] for n in in_rotation if weights[n] > 0]
            assert all(v is not None for v in values)
            load = sum(weights[n] * (cpu[n] or 0.0) for n in in_rotation)
            staying = sum(weights[n] for n in after)
            assert staying > 0
            assert load / staying < 0.9
        for b in d.blocked:
            if b.reason.rule is Rule.CAPACITY:
                assert b.kind is ActionKind.DRAIN
        in_rotation = after
