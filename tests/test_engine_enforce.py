"""Rule 11 of the engine (enforce_weights), as a table: which servers get their expected
weight, and which corrections are actions."""

from __future__ import annotations

import pytest

from lbhealthd.engine import (
    EngineState,
    Observation,
    PoolSettings,
    ServerState,
    Settings,
    decide,
)
from lbhealthd.engine.hysteresis import Phase
from lbhealthd.model import ActionKind, AdminState, Desired, Rule, ServerId
from lbhealthd.testing import ok

S1 = ServerId("api", "s1")
NOW = 100.0
RAMPING = ServerState(fraction=0.5, ramp_at=NOW)
DRAINED = ServerState(phase=Phase.DRAINED, drained_at=NOW - 1, hold=30.0)


def obs(weight: int, expected: int | None, *, out: bool = False, full: int = 1) -> Observation:
    sample = ok(str(S1), NOW, latency_ms=300)  # in the band: changes nothing else
    return Observation(sample, out, weight, full, None, expected)


@pytest.mark.parametrize(
    ("enforce", "state", "observation", "weight", "corrected"),
    [
        # on: a live weight that differs is set back, with an action
        (True, None, obs(1, 100), 100, True),
        (True, None, obs(100, 1), 1, True),
        (True, None, obs(7, 0), 0, True),
        # on, already right: its weight is held, no action
        (True, None, obs(100, 100), 100, False),
        # off: left alone whatever the expected weight
        (False, None, obs(1, 100), None, False),
        # on, but no expected weight for the server
        (True, None, obs(1, None), None, False),
        # on, but out of rotation by someone else's hand
        (True, None, obs(1, 100, out=True), None, False),
        # on, but lbhealthd holds it out
        (True, DRAINED, obs(1, 100), None, False),
    ],
)
def test_enforce_weights_table(
    enforce: bool,
    state: ServerState | None,
    observation: Observation,
    weight: int | None,
    corrected: bool,
) -> None:
    settings = Settings({"api": PoolSettings("api", enforce_weights=enforce)})
    before = EngineState({S1: state} if state is not None else {})
    _, decision = decide(before, {S1: observation}, {}, settings, NOW)
    assert decision.desired[S1].weight == weight
    kinds = [(a.kind, a.reason.rule) for a in decision.actions]
    assert kinds == ([(ActionKind.SET_WEIGHT, Rule.ENFORCE_WEIGHTS)] if corrected else [])
    if corrected:
        evidence = decision.actions[0].reason.evidence
        assert (evidence["from"], evidence["to"]) == (observation.weight, observation.expected)
    if state is DRAINED:
        assert decision.desired[S1] == Desired(AdminState.DRAIN)


@pytest.mark.parametrize("enforce", [True, False])
def test_a_ramp_climbs_toward_the_expected_weight_without_a_correction(enforce: bool) -> None:
    """Configured weight 1, expected 100: at half its share a ramping server is well above 1
    with enforce_weights on, and stays at most 1 with it off."""
    settings = Settings({"api": PoolSettings("api", enforce_weights=enforce)})
    before = EngineState({S1: RAMPING})
    _, decision = decide(before, {S1: obs(5, 100, full=1)}, {}, settings, NOW)
    want = decision.desired[S1]
    assert want.weight_fraction == 0.5 and want.weight is not None
    assert (1 < want.weight < 100) if enforce else want.weight == 1
    assert not decision.actions


def test_the_round_a_ramp_ends_is_no_correction() -> None:
    settings = Settings({"api": PoolSettings("api", enforce_weights=True, slow_start=1.0)})
    before = EngineState({S1: ServerState(fraction=0.99, ramp_at=NOW - 5, good=3)})
    sample = ok(str(S1), NOW, latency_ms=10)  # healthy: the ramp completes
    observation = Observation(sample, False, 80, 1, None, 100)
    state, decision = decide(before, {S1: observation}, {}, settings, NOW)
    assert state.servers[S1].fraction == 1.0
    assert decision.desired[S1] == Desired(AdminState.READY, weight=100)
    assert not decision.actions
    # the next round, a weight that still differs is a correction
    _, decision = decide(state, {S1: observation}, {}, settings, NOW + 1)
    assert [a.kind for a in decision.actions] == [ActionKind.SET_WEIGHT]
