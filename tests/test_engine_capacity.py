"""Rule 5's capacity check (``capacity_signal``): a drain only if the servers left can carry
the drained server's load."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from lbhealthd.engine import EngineState, Observation, PoolSettings, Settings, decide
from lbhealthd.engine.settings import Marks
from lbhealthd.model import ActionKind, Decision, Rule, ServerId
from lbhealthd.testing import failed, ok

MARKS = {"cpu": Marks(high=0.9, low=0.6)}


def capacity_pool(signal: str | None = "cpu", **kwargs: object) -> PoolSettings:
    base: dict[str, object] = {
        "name": "api",
        "marks": MARKS,
        "fall": 1,
        "max_drained": 1.0,
        "min_in_service": 0,
        "capacity_signal": signal,
    }
    base.update(kwargs)
    return PoolSettings(**base)  # type: ignore[arg-type]


def one_round(
    ps: PoolSettings,
    cpu: Mapping[str, float | None],
    weights: Mapping[str, int] | None = None,
    external_out: frozenset[str] = frozenset(),
) -> Decision:
    """One round where each server reports its cpu (None: a failed probe)."""
    now = 1000.0
    observations = {}
    for name, value in cpu.items():
        sid = ServerId(ps.name, name)
        sample = failed(sid, now) if value is None else ok(sid, now, cpu=value)
        weight = (weights or {}).get(name, 100)
        observations[sid] = Observation(
            sample, external_out=name in external_out, weight=weight, full_weight=weight
        )
    _, decision = decide(EngineState(), observations, {}, Settings({ps.name: ps}), now)
    return decision


def drained(decision: Decision) -> list[str]:
    return sorted(a.server.server for a in decision.actions if a.kind is ActionKind.DRAIN)


def refused(decision: Decision, rule: Rule = Rule.CAPACITY) -> dict[str, Mapping[str, object]]:
    return {b.server.server: b.reason.evidence for b in decision.blocked if b.reason.rule is rule}


def test_the_others_near_their_high_mark_cannot_carry_it() -> None:
    """The issue's case: s1 at 1.2, four others at 0.85: (1.2 + 4 × 0.85) / 4 = 1.15 >= 0.9."""
    cpu = {"s1": 1.2, "s2": 0.85, "s3": 0.85, "s4": 0.85, "s5": 0.85}
    d = one_round(capacity_pool(), cpu)
    assert drained(d) == []
    evidence = refused(d)["s1"]
    assert evidence["projected"] == pytest.approx(1.15)
    assert evidence["high"] == 0.9
    assert evidence["capacity_signal"] == "cpu"
    [blocked] = d.blocked
    assert "projected 1.15 >= high 0.9" in blocked.reason.message


def test_the_others_with_room_take_it() -> None:
    """The positive twin: the others at 0.3: (1.2 + 4 × 0.3) / 4 = 0.6 < 0.9: drained."""
    cpu = {"s1": 1.2, "s2": 0.3, "s3": 0.3, "s4": 0.3, "s5": 0.3}
    d = one_round(capacity_pool(), cpu)
    assert drained(d) == ["s1"]
    assert refused(d) == {}
    [action] = d.actions
    assert action.reason.rule is Rule.FALL
    assert action.reason.evidence["projected"] == pytest.approx(0.6)


def test_without_capacity_signal_the_same_pool_drains_as_before() -> None:
    cpu = {"s1": 1.2, "s2": 0.85, "s3": 0.85, "s4": 0.85, "s5": 0.85}
    assert drained(one_round(capacity_pool(None), cpu)) == ["s1"]


def test_the_load_spreads_in_proportion_to_the_weights() -> None:
    """s1 (weight 100) at 1.0; s2 (weight 300) at 0.5, s3 (weight 100) at 0.5:
    (100 × 1.0 + 300 × 0.5 + 100 × 0.5) / 400 = 0.75 < 0.9. With s1 at weight 300 instead:
    (300 × 1.0 + 200) / 400 = 1.25: refused."""
    cpu = {"s1": 1.0, "s2": 0.5, "s3": 0.5}
    light = one_round(capacity_pool(), cpu, {"s1": 100, "s2": 300, "s3": 100})
    assert drained(light) == ["s1"]
    assert light.actions[0].reason.evidence["projected"] == pytest.approx(0.75)
    heavy = one_round(capacity_pool(), cpu, {"s1": 300, "s2": 300, "s3": 100})
    assert drained(heavy) == []
    assert refused(heavy)["s1"]["projected"] == pytest.approx(1.25)


def test_worst_first_while_the_projection_allows_then_the_rest_are_refused() -> None:
    """Three overloaded, five with room: each accepted drain raises the projection for the
    next. Total load 1.5 + 1.2 + 1.0 + 5 × 0.2 = 4.7 (equal weights): draining s1 leaves
    4.7 / 7 = 0.67, s2 then 4.7 / 6 = 0.78, s3 would make 4.7 / 5 = 0.94 >= 0.9."""
    cpu = {"s1": 1.5, "s2": 1.2, "s3": 1.0, **{f"r{i}": 0.2 for i in range(5)}}
    d = one_round(capacity_pool(), cpu)
    assert drained(d) == ["s1", "s2"]
    assert list(refused(d)) == ["s3"]
    assert refused(d)["s3"]["projected"] == pytest.approx(0.94)


def test_a_lighter_candidate_does_not_go_out_while_a_worse_one_is_kept() -> None:
    """Load 100 × 1.5 + 10 × 1.0 + 890 × 0.8 = 872 over weight 1000. s1 cannot go
    (872 / 900 = 0.97); s2 alone would fit (872 / 990 = 0.88), but it is ranked after s1:
    refused too, naming the worse server kept in."""
    cpu = {"s1": 1.5, "s2": 1.0, "s3": 0.8, "s4": 0.8}
    d = one_round(capacity_pool(), cpu, {"s1": 100, "s2": 10, "s3": 445, "s4": 445})
    assert drained(d) == []
    assert refused(d)["s2"]["projected"] == pytest.approx(872 / 990, abs=1e-4)
    assert refused(d)["s2"]["worse_kept"] == "s1"


def test_a_server_in_rotation_without_a_value_makes_the_projection_unknown() -> None:
    """Safe: a server in rotation whose probe failed (or without the signal) could be full."""
    cpu = {"s1": 1.2, "s2": 0.2, "s3": 0.2, "s4": None}
    d = one_round(capacity_pool(), cpu)
    assert "s1" not in drained(d)
    evidence = refused(d)["s1"]
    assert evidence["projected"] is None
    assert evidence["without_value"] == ["s4"]


def test_a_server_out_of_rotation_counts_nowhere() -> None:
    """The positive twin of the unknown case: the same server reported down by the LB carries
    nothing, so it does not make the projection unknown."""
    cpu = {"s1": 1.2, "s2": 0.2, "s3": 0.2, "s4": None}
    d = one_round(capacity_pool(), cpu, external_out=frozenset({"s4"}))
    assert drained(d) == ["s1"]
    assert d.actions[0].reason.evidence["projected"] == pytest.approx(0.8)


def test_a_failed_candidate_has_an_unknown_load() -> None:
    cpu = {"s1": None, "s2": 0.3, "s3": 0.3}
    d = one_round(capacity_pool(), cpu)
    assert drained(d) == []
    assert refused(d)["s1"]["without_value"] == ["s1"]


def test_the_caps_are_checked_before_the_capacity() -> None:
    cpu = {"s1": 1.2, "s2": 0.85, "s3": 0.85}
    d = one_round(capacity_pool(max_drained=0.0), cpu)
    assert refused(d) == {}
    assert list(refused(d, Rule.MAX_DRAINED)) == ["s1"]


def test_a_server_of_weight_0_counts_nowhere() -> None:
    """Weight 0 takes no traffic: its missing value does not make the projection unknown, and
    it adds no weight to carry the load (the same pool at weight 100 for s4: unknown). s4,
    failing, is a candidate too: ranked first, and it moves no load."""
    cpu = {"s1": 1.2, "s2": 0.2, "s3": 0.2, "s4": None}
    d = one_round(capacity_pool(), cpu, {"s1": 100, "s2": 100, "s3": 100, "s4": 0})
    assert drained(d) == ["s1", "s4"]
    by_server = {a.server.server: a.reason.evidence for a in d.actions}
    assert by_server["s1"]["projected"] == pytest.approx(0.8)
    assert drained(one_round(capacity_pool(), cpu)) == []
