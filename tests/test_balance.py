"""The traffic-balance monitor driven round by round with plain float times."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lbhealthd.monitors.balance import (
    MAX_SAMPLES,
    NO_VERDICT,
    BalanceMonitor,
    BalanceReport,
    ServerTraffic,
    factor_sigmas,
    share_sigma,
)

FIVE = ("s1", "s2", "s3", "s4", "s5")
POSTMORTEM = {"s1": 493, "s2": 490, "s3": 7, "s4": 5, "s5": 5}  # per second: 49.3/49/0.7/0.5/0.5 %
EVEN = dict.fromkeys(FIVE, 200)
SKEWED_175 = {"s1": 350, "s2": 163, "s3": 163, "s4": 162, "s5": 162}  # s1 at 1.75x


class Pool:
    """Cumulative LB counters for a set of servers, advanced by per-round increments."""

    def __init__(self, names: Sequence[str] = FIVE, weight: float = 100.0) -> None:
        self.totals = dict.fromkeys(names, 0)
        self.weights = dict.fromkeys(names, weight)
        self.out: set[str] = set()

    def traffic(self) -> dict[str, ServerTraffic]:
        return {
            name: ServerTraffic(total, name not in self.out, self.weights[name])
            for name, total in self.totals.items()
        }

    def advance(self, increments: Mapping[str, int]) -> dict[str, ServerTraffic]:
        for name, count in increments.items():
            self.totals[name] += count
        return self.traffic()


def drive(
    monitor: BalanceMonitor,
    pool: Pool,
    increments: Mapping[str, int],
    start: float,
    stop: float,
    step: float = 1.0,
) -> list[tuple[float, BalanceReport]]:
    """Feed one round every ``step`` seconds from ``start`` up to but excluding ``stop``."""
    reports = []
    rounds = round((stop - start) / step)
    for i in range(rounds):
        now = start + i * step
        reports.append((now, monitor.update(now, pool.advance(increments))))
    return reports


def first_firing(reports: Sequence[tuple[float, BalanceReport]]) -> float | None:
    return next((now for now, report in reports if report.firing), None)


# --- steady traffic: does it fire, when, and whom does it name -----------------------------


@dataclass(frozen=True)
class Steady:
    increments: Mapping[str, int]
    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(FIVE, 100.0))
    hold: float = 30.0
    min_sessions: int = 50
    fires_at: float | None = None  # rounds every second from t=0; first verdict at t=1
    culprits: tuple[str, ...] = ()
    imbalance: float | None = None  # at the last round; None means no verdict


STEADY = [
    pytest.param(
        Steady(POSTMORTEM, fires_at=31.0, culprits=("s1", "s2"), imbalance=2.465),
        id="postmortem-equal-intent-fires-after-hold",
    ),
    pytest.param(
        Steady(POSTMORTEM, hold=0.0, fires_at=1.0, culprits=("s1", "s2"), imbalance=2.465),
        id="postmortem-hold-0-fires-on-first-verdict",
    ),
    pytest.param(
        Steady(
            POSTMORTEM,
            weights={"s1": 100, "s2": 100, "s3": 1, "s4": 1, "s5": 1},
            hold=0.0,
            imbalance=1.421,  # s3: 0.7 % of traffic against 1/203
        ),
        id="postmortem-intent-equals-live-weights-no-alert",
    ),
    pytest.param(Steady(EVEN, hold=0.0, imbalance=1.0), id="equal-weights-even-traffic"),
    pytest.param(
        Steady(
            {"a": 300, "b": 100, "c": 100},
            weights={"a": 3, "b": 1, "c": 1},
            hold=0.0,
            imbalance=1.0,
        ),
        id="weighted-traffic-proportional",
    ),
    pytest.param(
        Steady({"a": 3, "b": 1, "c": 0}, weights={"a": 1, "b": 1, "c": 1}, hold=0.0),
        id="below-min-sessions-no-verdict-even-if-skewed",
    ),
    pytest.param(
        Steady(
            {"a": 50, "b": 0, "c": 0},
            weights={"a": 1, "b": 1, "c": 1},
            hold=0.0,
            fires_at=1.0,
            culprits=("a",),
            imbalance=3.0,
        ),
        id="exactly-min-sessions-gives-a-verdict",
    ),
    pytest.param(
        Steady({"a": 100, "b": 0}, weights={"a": 1, "b": 1}, hold=0.0, imbalance=2.0),
        id="ratio-exactly-factor-does-not-fire",
    ),
    pytest.param(
        Steady(SKEWED_175, hold=0.0, imbalance=1.75), id="between-clear-and-factor-stays-quiet"
    ),
]


@pytest.mark.parametrize("case", STEADY)
def test_steady_traffic(case: Steady) -> None:
    """Steady traffic fires exactly when a server is above factor for hold, naming the culprits."""
    names = list(case.weights)
    pool = Pool(names)
    pool.weights = dict(case.weights)
    monitor = BalanceMonitor(hold=case.hold, min_sessions=case.min_sessions)
    reports = drive(monitor, pool, case.increments, 0.0, 60.0)

    assert first_firing(reports) == case.fires_at
    last = reports[-1][1]
    assert last.culprits == case.culprits
    if case.imbalance is None:
        assert last.imbalance is None
        assert last.reason.startswith(NO_VERDICT)
        assert last.shares == {}
    else:
        assert last.imbalance == pytest.approx(case.imbalance)
        assert set(last.shares) == set(names)
        for culprit in case.culprits:
            assert f"{culprit} gets" in last.reason
    changes = [now for now, report in reports if report.changed]
    assert changes == ([] if case.fires_at is None else [case.fires_at])
    assert last.since == case.fires_at


def test_postmortem_reason_names_shares_span_and_volume() -> None:
    """The reason states each culprit's share, its intended share and the window's volume."""
    monitor = BalanceMonitor(hold=0.0)
    reports = drive(monitor, Pool(), POSTMORTEM, 0.0, 20.0)
    report = reports[-1][1]
    assert report.firing
    assert report.reason == (
        "s1 gets 49.3% of traffic vs 20.0% intended (2.46x), "
        "s2 gets 49.0% of traffic vs 20.0% intended (2.45x) over 10s, 10,000 sessions"
    )
    assert report.window_sessions == 10_000
    assert report.shares["s3"].sessions == 70


# --- sequences: resets, drains, set changes -------------------------------------------------


def test_first_round_has_no_verdict() -> None:
    """A single sample gives no delta, so no verdict."""
    report = BalanceMonitor(hold=0.0).update(0.0, Pool().advance(POSTMORTEM))
    assert report.imbalance is None
    assert report.reason.startswith(NO_VERDICT)
    assert not report.firing


@pytest.mark.parametrize(
    "reset",
    [
        pytest.param(dict.fromkeys(FIVE, 0), id="lb-restarted-all-counters-zero"),
        pytest.param({"s1": 0}, id="one-server-counter-reset"),
    ],
)
def test_counter_going_backwards_restarts_the_window(reset: Mapping[str, int]) -> None:
    """A counter that goes backwards voids the history: no negative deltas, no false alert."""
    pool = Pool()
    monitor = BalanceMonitor(hold=0.0)
    drive(monitor, pool, EVEN, 0.0, 20.0)
    pool.totals.update(reset)
    at_reset = monitor.update(20.0, pool.advance(EVEN))
    assert at_reset.imbalance is None
    assert at_reset.window_sessions == 0
    after = monitor.update(21.0, pool.advance(EVEN))
    assert after.imbalance == pytest.approx(1.0)
    assert after.window_sessions == 1000
    assert all(info.sessions == 200 for info in after.shares.values())
    assert not after.firing


def test_counter_reset_keeps_a_firing_alert() -> None:
    """An LB restart is a no-verdict round: a firing alert stays firing with its start time."""
    pool = Pool()
    monitor = BalanceMonitor(hold=0.0)
    drive(monitor, pool, POSTMORTEM, 0.0, 5.0)
    pool.totals = dict.fromkeys(FIVE, 0)
    report = monitor.update(5.0, pool.advance(POSTMORTEM))
    assert report.imbalance is None
    assert report.firing
    assert not report.changed
    assert report.since == 1.0


def test_drained_server_is_excluded() -> None:
    """A server out of service counts in neither actual nor intended shares."""
    pool = Pool()
    pool.out.add("s3")
    monitor = BalanceMonitor(hold=0.0)
    # the drained server still finishes some sessions; the other four split the rest evenly
    reports = drive(monitor, pool, {"s1": 250, "s2": 250, "s3": 40, "s4": 250, "s5": 250}, 0, 20)
    report = reports[-1][1]
    assert set(report.shares) == {"s1", "s2", "s4", "s5"}
    assert report.imbalance == pytest.approx(1.0)
    assert report.shares["s1"].intended == pytest.approx(0.25)
    assert report.window_sessions == 10_000


def test_zero_intended_weight_is_excluded() -> None:
    """A server whose intended weight is 0 (a backup, a ramp at zero) is left out."""
    pool = Pool()
    pool.weights["s5"] = 0.0
    reports = drive(BalanceMonitor(hold=0.0), pool, {**EVEN, "s5": 0}, 0.0, 5.0)
    report = reports[-1][1]
    assert "s5" not in report.shares
    assert report.imbalance == pytest.approx(1.0)


def test_fewer_than_two_servers_gives_no_verdict() -> None:
    """With one server in service there is nothing to compare."""
    pool = Pool(("a", "b"))
    pool.out.add("b")
    reports = drive(BalanceMonitor(hold=0.0), pool, {"a": 500, "b": 0}, 0.0, 5.0)
    assert all(report.imbalance is None for _, report in reports)
    assert reports[-1][1].reason.startswith(NO_VERDICT)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("drain", id="server-drained"),
        pytest.param("vanish", id="server-vanished"),
        pytest.param("appear", id="server-appeared"),
        pytest.param("restore", id="server-restored"),
    ],
)
def test_server_set_change_restarts_the_window(change: str) -> None:
    """When the counted servers change, the window restarts so shares compare like with like."""
    pool = Pool()
    if change == "restore":
        pool.out.add("s5")
    monitor = BalanceMonitor(hold=0.0)
    drive(monitor, pool, EVEN, 0.0, 20.0)
    if change == "drain":
        pool.out.add("s5")
    elif change == "vanish":
        del pool.totals["s5"]
    elif change == "appear":
        pool.totals["s6"] = 1_000_000  # a server up for long elsewhere: its past is not traffic
        pool.weights["s6"] = 100.0
    else:
        pool.out.discard("s5")
    counted = {name for name in pool.totals if name not in pool.out}
    increments = {name: 200 for name in pool.totals}
    at_change = monitor.update(20.0, pool.advance(increments))
    assert at_change.imbalance is None
    after = monitor.update(21.0, pool.advance(increments))
    assert set(after.shares) == counted
    assert after.window_sessions == 200 * len(counted)
    assert after.imbalance == pytest.approx(1.0)


def test_restored_server_does_not_blend_old_and_new_spreads() -> None:
    """A server back in service has no traffic in the older part of the window; the restart keeps
    that gap from making the others look overloaded."""
    pool = Pool()
    pool.out.add("s5")
    monitor = BalanceMonitor(hold=0.0, factor=1.2, clear_factor=1.1)
    before = drive(monitor, pool, {**dict.fromkeys(FIVE, 250), "s5": 0}, 0.0, 10.0)
    assert first_firing(before) is None
    pool.out.discard("s5")
    after = drive(monitor, pool, EVEN, 10.0, 15.0)
    assert first_firing(after) is None
    assert all(r.imbalance == pytest.approx(1.0) for now, r in after if now > 10.0)


def test_polls_sparser_than_the_window_still_give_verdicts() -> None:
    """A poll interval longer than the window keeps the previous sample as the baseline."""
    reports = drive(BalanceMonitor(hold=0.0), Pool(), POSTMORTEM, 0.0, 60.0, step=15.0)
    assert [report.imbalance is None for _, report in reports] == [True, False, False, False]
    assert reports[-1][1].window_sessions == 1000
    assert "over 15s, 1,000 sessions" in reports[-1][1].reason
    assert reports[-1][1].firing


def test_window_slides() -> None:
    """Old traffic leaves the window: a past skew stops counting once it is older than window."""
    pool = Pool()
    monitor = BalanceMonitor(hold=0.0)
    drive(monitor, pool, POSTMORTEM, 0.0, 5.0)
    reports = drive(monitor, pool, EVEN, 5.0, 30.0)
    by_time = dict(reports)
    assert by_time[13.0].imbalance is not None and by_time[13.0].imbalance > 1.1
    assert by_time[14.0].imbalance == pytest.approx(1.0)
    assert by_time[29.0].window_sessions == 10 * 1000


def test_memory_is_bounded() -> None:
    """Rounds faster than window / MAX_SAMPLES shrink the window to MAX_SAMPLES samples."""
    pool = Pool()
    monitor = BalanceMonitor(hold=0.0)
    reports = drive(monitor, pool, EVEN, 0.0, 50.0, step=0.01)
    assert reports[-1][1].window_sessions == (MAX_SAMPLES - 1) * 1000


def test_weight_change_inside_the_window_is_time_averaged() -> None:
    """When live weights are fixed and traffic follows at once, the old spread is not an alarm."""
    pool = Pool()
    pool.weights = {"s1": 100, "s2": 100, "s3": 1, "s4": 1, "s5": 1}
    monitor = BalanceMonitor(hold=0.0)
    drive(monitor, pool, POSTMORTEM, 0.0, 20.0)
    pool.weights = dict.fromkeys(FIVE, 100.0)
    reports = drive(monitor, pool, EVEN, 20.0, 40.0)
    assert first_firing(reports) is None
    assert reports[-1][1].imbalance == pytest.approx(1.0)
    assert sum(info.intended for info in reports[5][1].shares.values()) == pytest.approx(1.0)


# --- the alert's hysteresis -------------------------------------------------------------------


def fired_monitor(pool: Pool, hold: float = 10.0) -> BalanceMonitor:
    monitor = BalanceMonitor(hold=hold)
    reports = drive(monitor, pool, POSTMORTEM, 0.0, 15.0)
    assert first_firing(reports) == 1.0 + hold
    return monitor


def test_clears_only_after_hold_at_or_below_clear_factor() -> None:
    """Clearing needs imbalance <= clear_factor on every verdict for hold seconds."""
    pool = Pool()
    monitor = fired_monitor(pool)
    reports = drive(monitor, pool, EVEN, 15.0, 60.0)
    first_low = next(now for now, r in reports if r.imbalance is not None and r.imbalance <= 1.5)
    by_time = dict(reports)
    assert by_time[first_low].firing  # not at the first round below
    assert all(r.firing for now, r in reports if now < first_low + 10.0)
    assert by_time[first_low + 10.0].changed
    assert not by_time[first_low + 10.0].firing
    assert by_time[first_low + 10.0].since is None
    assert [now for now, r in reports if r.changed] == [first_low + 10.0]


def test_stays_firing_between_clear_factor_and_factor() -> None:
    """A firing alert holds while the imbalance sits between clear_factor and factor."""
    pool = Pool()
    monitor = fired_monitor(pool)
    reports = drive(monitor, pool, SKEWED_175, 15.0, 120.0)
    assert all(r.firing and not r.changed for _, r in reports)
    last = reports[-1][1]
    assert last.imbalance == pytest.approx(1.75)
    assert last.culprits == ()
    assert last.since == 11.0
    assert "alert clears at <= 1.50x" in last.reason


def test_a_dip_below_factor_restarts_the_run_to_fire() -> None:
    """Firing needs an unbroken run above factor: one round below starts the count again."""
    pool = Pool()
    monitor = BalanceMonitor(hold=5.0, window=1.0)
    reports = drive(monitor, pool, POSTMORTEM, 0.0, 4.0)  # above from t=1
    reports += drive(monitor, pool, EVEN, 4.0, 5.0)  # one round even
    reports += drive(monitor, pool, POSTMORTEM, 5.0, 20.0)  # above again from t=5
    assert first_firing(reports) == 10.0


def test_no_verdict_rounds_keep_a_firing_alert() -> None:
    """Rounds with too little traffic neither clear a firing alert nor change its start."""
    pool = Pool()
    monitor = fired_monitor(pool)
    reports = drive(monitor, pool, dict.fromkeys(FIVE, 0), 15.0, 200.0)
    assert all(r.imbalance is None for now, r in reports if now >= 25.0)
    assert all(r.firing and not r.changed and r.since == 11.0 for _, r in reports)
    assert reports[-1][1].culprits == ()


def test_no_verdict_rounds_keep_a_quiet_alert_and_break_the_run() -> None:
    """A quiet alert stays quiet through no-verdict rounds, and the run toward firing restarts."""
    pool = Pool()
    monitor = BalanceMonitor(hold=10.0, window=1.0)
    reports = drive(monitor, pool, POSTMORTEM, 0.0, 8.0)  # above from t=1: 6 s of the 10
    reports += drive(monitor, pool, dict.fromkeys(FIVE, 0), 8.0, 20.0)
    reports += drive(monitor, pool, POSTMORTEM, 20.0, 40.0)  # above again from t=20
    assert all(not r.firing for now, r in reports if now < 30.0)
    assert first_firing(reports) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"factor": 1.0}, id="factor-not-above-1"),
        pytest.param({"factor": math.nan}, id="factor-nan"),
        pytest.param({"factor": 2.0, "clear_factor": 2.5}, id="clear-above-factor"),
        pytest.param({"clear_factor": 1.0}, id="clear-not-above-1"),
        pytest.param({"hold": -1.0}, id="negative-hold"),
        pytest.param({"min_sessions": 0}, id="zero-min-sessions"),
        pytest.param({"window": 0.0}, id="zero-window"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    """Settings that could never fire, never clear or divide by zero are refused."""
    with pytest.raises(ValueError):
        BalanceMonitor(**kwargs)


@pytest.mark.parametrize(
    ("total", "weight"),
    [pytest.param(-1, 1.0, id="negative-counter"), pytest.param(0, -1.0, id="negative-weight")],
)
def test_invalid_traffic_is_refused(total: int, weight: float) -> None:
    """A negative counter or weight is a caller's bug, refused where it is built."""
    with pytest.raises(ValueError):
        ServerTraffic(total, True, weight)


def test_default_clear_factor_is_the_midpoint() -> None:
    """clear_factor defaults to halfway between 1 and factor."""
    assert BalanceMonitor(factor=3.0).clear_factor == 2.0


# --- the noise floor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "sessions", "servers", "sigmas"),
    [
        pytest.param(2.0, 50, 5, 3.536, id="default-floor-5-servers"),
        pytest.param(2.0, 50, 10, 2.357, id="default-floor-10-servers"),
        pytest.param(2.0, 1000, 10, 10.541, id="busy-pool"),
    ],
)
def test_noise_floor_arithmetic(factor: float, sessions: int, servers: int, sigmas: float) -> None:
    """A factor-x share sits (factor−1)·sqrt(n·p/(1−p)) standard deviations above the mean."""
    assert factor_sigmas(factor, sessions, servers) == pytest.approx(sigmas, abs=1e-3)
    p = 1 / servers
    assert share_sigma(sessions, servers) == pytest.approx(math.sqrt(p * (1 - p) / sessions))


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    servers=st.integers(5, 10),
    low=st.integers(100, 400),
)
def test_even_random_traffic_never_fires(seed: int, servers: int, low: int) -> None:
    """Equal weights and sessions spread at random, evenly in expectation: never an alert."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(servers)]
    pool = Pool(names)
    # hold 5 s, stricter than the default 30 s; not 0, because the first windows hold one round
    # (>= 100 sessions), where 2x over 10 servers is only 3.3 sigma away
    monitor = BalanceMonitor(factor=2.0, min_sessions=50, hold=5.0)
    for second in range(60):
        n = rng.randint(low, 2 * low)
        counts = Counter(rng.choices(names, k=n))
        report = monitor.update(float(second), pool.advance(counts))
        assert not report.firing, report.reason
        if report.imbalance is not None:
            assert sum(i.actual for i in report.shares.values()) == pytest.approx(1.0)
            assert sum(i.intended for i in report.shares.values()) == pytest.approx(1.0)
            assert report.imbalance == max(i.ratio for i in report.shares.values())
        if second >= 10:  # full window: at least 1,000 sessions, 2x is over 10 sigma away
            assert report.imbalance is not None
            assert report.imbalance < 1.75


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.integers(1, 100), min_size=2, max_size=10),
    hot_index=st.integers(0, 9),
    excess=st.floats(3.0, 10.0),
    per_round=st.integers(50, 2000),
    hold=st.floats(0.0, 60.0),
    step=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
)
def test_a_server_at_3x_its_share_fires_within_hold(
    weights: list[int], hot_index: int, excess: float, per_round: int, hold: float, step: float
) -> None:
    """A server at 3x or more of its intended share, with volume, for longer than hold fires."""
    hot_index %= len(weights)
    intended = weights[hot_index] / sum(weights)
    assume(intended * 3.0 <= 1.0)
    names = [f"s{i}" for i in range(len(weights))]
    hot = names[hot_index]
    pool = Pool(names)
    pool.weights = {name: float(w) for name, w in zip(names, weights, strict=True)}
    hot_count = min(per_round, math.ceil(per_round * intended * min(excess, 1.0 / intended)))
    rest = [name for name in names if name != hot]
    increments = dict.fromkeys(rest, 0)
    for i in range(per_round - hot_count):
        increments[rest[i % len(rest)]] += 1
    increments[hot] = hot_count
    monitor = BalanceMonitor(factor=2.0, min_sessions=50, hold=hold)

    rounds = math.ceil(hold / step) + 3
    reports = drive(monitor, pool, increments, 0.0, rounds * step, step)
    first_verdict = step  # the second sample
    due = next(now for now, _ in reports if now - first_verdict >= hold)
    fired = first_firing(reports)
    assert fired is not None and fired <= due
    last = reports[-1][1]
    assert hot in last.culprits
    assert last.shares[hot].ratio >= 3.0 - 1e-9
    assert f"{hot} gets" in last.reason
