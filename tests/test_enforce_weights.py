"""enforce_weights and the misweighted alarm: weights set back to ``expected_weights`` through
the one writer (not while lbhealthd ramps a server up or holds it out, not when off), and a
misweighted pool that stays flagged while its drains make the traffic look even."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from lbhealthd.daemon.monitoring import Watch
from lbhealthd.errors import ConfigError
from lbhealthd.model import AdminState, Member, OpState, ServerId
from lbhealthd.status import document
from lbhealthd.testing import memory_pool
from tests.daemon_harness import make_config
from tests.test_reconciler import COOL, HOT, Harness, Logs, events
from tests.test_reconciler import sid as api

ENFORCE: dict[str, Any] = {"expected_weights": {"default": 100}, "enforce_weights": True}
POSTMORTEM = {"s1": 100, "s2": 100, "s3": 1, "s4": 1, "s5": 1}


def corrections(h: Harness) -> float:
    value = h.reconciler.metrics.registry.get_sample_value(
        "lbhealthd_weight_corrections_total", {"pool": "api"}
    )
    return 0.0 if value is None else value


def misweight(h: Harness, weights: Mapping[str, int]) -> None:
    for name, weight in weights.items():
        h.driver.set_by_hand(name, weight=weight)


# --- config ----------------------------------------------------------------------------------


def test_enforce_weights_requires_expected_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(["unix:/nonexistent"], tmp_path, enforce_weights=True)
    assert "pools[0].enforce_weights" in str(err.value)
    assert "expected_weights" in str(err.value)
    config = make_config(["unix:/nonexistent"], tmp_path, **ENFORCE)
    assert config.pools[0].enforce_weights is True
    assert config.engine_settings().pools["api"].enforce_weights is True


# --- the reconciler in memory ----------------------------------------------------------------


async def test_the_postmortem_weights_are_set_back_in_the_first_round(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """100/100/1/1/1 with 100 expected: right after one round, each correction an action of
    the one writer with its rule, a weight_enforced event with before/after, and a count."""
    h = make(**ENFORCE)
    misweight(h, POSTMORTEM)
    await h.tick()
    assert h.driver.weights() == dict.fromkeys(POSTMORTEM, 100)
    assert sorted(h.driver.sent("weight")) == [("s3", 100), ("s4", 100), ("s5", 100)]
    sets = h.actions("set_weight")
    assert {(a["server"], a["previous"], a["value"], a["rule"]) for a in sets} == {
        (f"api/s{i}", 1, 100, "enforce_weights") for i in (3, 4, 5)
    }
    enforced = events(logs, "weight_enforced")
    assert {e["server"] for e in enforced} == {"api/s3", "api/s4", "api/s5"}
    assert all(e["evidence"]["from"] == 1 and e["evidence"]["to"] == 100 for e in enforced)
    assert corrections(h) == 3
    sent = len(h.driver.commands)
    await h.tick(5)
    assert len(h.driver.commands) == sent  # level-triggered: nothing more once right
    assert h.store.load_owned() == {}  # a corrected weight is not held


async def test_a_weight_set_by_hand_is_set_back(make: Callable[..., Harness], logs: Logs) -> None:
    h = make(**ENFORCE)
    await h.tick(2)
    h.driver.set_by_hand("s2", weight=7)
    await h.tick()
    assert h.driver.weights()["s2"] == 100
    assert [e["server"] for e in events(logs, "weight_enforced")] == ["api/s2"]


async def test_weights_are_left_alone_when_enforce_weights_is_off(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The negative twin: the same pool and expected_weights, enforce_weights off."""
    h = make(expected_weights={"default": 100})
    misweight(h, POSTMORTEM)
    await h.tick(5)
    assert h.driver.weights() == POSTMORTEM
    assert h.driver.sent("weight") == []
    assert not events(logs, "weight_enforced") and corrections(h) == 0


async def test_servers_without_an_expected_weight_are_left_alone(
    make: Callable[..., Harness],
) -> None:
    h = make(expected_weights={"s3": 100}, enforce_weights=True)
    misweight(h, POSTMORTEM)
    await h.tick(3)
    assert h.driver.weights() == {**POSTMORTEM, "s3": 100}


async def test_a_server_held_out_keeps_its_weight_and_is_set_right_once_back(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """While lbhealthd holds s1 drained, a weight set on it by hand stays (no correction);
    back in rotation, its ramp climbs to the expected weight, with no correction either."""
    h = make(**ENFORCE)
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    h.driver.set_by_hand("s1", weight=7)
    await h.tick(2)
    assert h.driver.weights()["s1"] == 7 and not events(logs, "weight_enforced")
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    await h.tick_until(lambda: h.driver.weights()["s1"] == 100)
    assert not events(logs, "weight_enforced")
    assert events(logs, "slow_start_done", "api/s1")


async def test_slow_start_ramps_toward_the_expected_weight(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The configured weight is 1 (the stale file), 100 expected: the first round sets every
    server to 100; a server back from a drain ramps up, step by step, to 100, not to 1, and its
    ramp is not cut short by a correction."""
    h = make(memory_pool("api", 5, weight=1), **ENFORCE)
    await h.tick()
    assert h.driver.weights() == dict.fromkeys(POSTMORTEM, 100)
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    weights = [h.driver.weights()["s1"]]
    while weights[-1] < 100:
        await h.tick()
        weights.append(h.driver.weights()["s1"])
        assert len(weights) < 20
    assert len(weights) >= 4 and weights == sorted(set(weights)), weights
    assert [e["server"] for e in events(logs, "weight_enforced")] == [
        f"api/s{i}" for i in range(1, 6)
    ]  # the first round's five only
    assert h.store.load_owned() == {}


# --- the alarm that stays while the cause stays ---------------------------------------------


def member(name: str, weight: int, total: int, admin: AdminState = AdminState.READY) -> Member:
    return Member(
        ServerId("api", name), "127.0.0.1", 8000, admin, OpState.UP, weight, weight, 0, 0, 0, total
    )


def test_a_misweighted_pool_stays_flagged_after_its_heavy_servers_are_drained(
    tmp_path: Path,
) -> None:
    """100/100/1/1/1 with 100 expected: the alert fires on s1/s2; once they are drained the
    traffic among s3-s5 is even, yet the pool is misweighted and the alert stays; it clears
    once the weights are right (the twin)."""
    pool = {
        "expected_weights": {"default": 100},
        "balance_alert": {"for": "0s", "min_sessions": 10, "window": "1s"},
    }
    config = make_config(["unix:/nonexistent"], tmp_path, **pool)
    watch = Watch(config)
    totals = dict.fromkeys(POSTMORTEM, 0)
    weights = dict(POSTMORTEM)
    drained: set[str] = set()
    t = 0.0

    def round_(per_server: Mapping[str, int]) -> None:
        nonlocal t
        t += 0.5
        for name, n in per_server.items():
            totals[name] += n
        members = {
            api(n): member(
                n, weights[n], totals[n], AdminState.DRAIN if n in drained else AdminState.READY
            )
            for n in totals
        }
        watch.balance(config.pools[0], members, t)

    skewed = {"s1": 49, "s2": 49, "s3": 1, "s4": 1, "s5": 1}
    for _ in range(3):
        round_(skewed)
    report = watch.pools["api"].report
    assert report is not None and report.firing
    drained = {"s1", "s2"}
    even = {"s1": 0, "s2": 0, "s3": 30, "s4": 30, "s5": 30}
    for _ in range(6):
        round_(even)
    report = watch.pools["api"].report
    assert report is not None and report.imbalance == pytest.approx(1.0)
    assert report.firing, report.reason
    assert set(report.misweighted) == {"s3", "s4", "s5"}
    assert "misweighted" in report.reason
    weights.update(s3=100, s4=100, s5=100)
    for _ in range(6):
        round_(even)
    report = watch.pools["api"].report
    assert report is not None and not report.firing and not report.misweighted


async def test_status_and_metrics_show_a_misweighted_pool(make: Callable[..., Harness]) -> None:
    h = make(expected_weights={"default": 100})
    misweight(h, {"s3": 1})
    await h.tick(2)
    doc = document(h.reconciler.report, h.wall(), h.mono())
    pool = doc["pools"][0]
    alerts = [a for a in pool["alerts"] if a["rule"] == "misweighted"]
    assert len(alerts) == 1 and "s3 weight 1 (expected 100)" in alerts[0]["message"]
    assert pool["balance"]["misweighted"] == {"s3": {"weight": 1, "expected": 100}}
    metrics = h.reconciler.metrics
    metrics.observe_round(h.reconciler.report, 0.01)
    gauge = metrics.registry.get_sample_value("lbhealthd_pool_misweighted_servers", {"pool": "api"})
    assert gauge == 1
    h.driver.set_by_hand("s3", weight=100)
    await h.tick()
    metrics.observe_round(h.reconciler.report, 0.01)
    assert not [
        a
        for a in document(h.reconciler.report, h.wall(), h.mono())["pools"][0]["alerts"]
        if a["rule"] == "misweighted"
    ]
    assert (
        metrics.registry.get_sample_value("lbhealthd_pool_misweighted_servers", {"pool": "api"})
        == 0
    )


async def test_a_correction_the_lb_does_not_take_is_logged_once_and_sent_again(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """In a dry run nothing is sent and the same correction is decided every round: one
    weight_enforced event, not one a round; a new wrong weight is logged again."""
    h = make(daemon={"dry_run": True}, **ENFORCE)
    misweight(h, {"s3": 1})
    await h.tick(4)
    assert h.driver.weights()["s3"] == 1 and h.driver.sent("weight") == []
    assert len(events(logs, "weight_enforced")) == 1
    assert corrections(h) == 0
    misweight(h, {"s3": 2})
    await h.tick(2)
    assert [e["evidence"]["from"] for e in events(logs, "weight_enforced")] == [1, 2]
