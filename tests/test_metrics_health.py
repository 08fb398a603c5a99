"""The metrics the alert rules watch: a pool against its caps, probes counted, failed writes
to state_dir and a starved daemon, set by a real reconciler driven in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbhealthd.daemon.metrics import Metrics
from lbhealthd.engine import PoolSettings
from lbhealthd.errors import StateError
from lbhealthd.model import AdminState, Member, OpState
from lbhealthd.report import PoolReport, RoundReport
from lbhealthd.testing import failed, ok, sid
from tests.test_reconciler import HOT, Harness, Logs


def get(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def member(name: str, admin: AdminState = AdminState.READY) -> Member:
    return Member(sid(f"api/{name}"), "127.0.0.1", 8000, admin, OpState.UP, 100, 100)


def one_pool(*members: Member, **pool: Any) -> RoundReport:
    report = PoolReport("api", PoolSettings("api"), {m.id: m for m in members}, **pool)
    return RoundReport((report,), rounds=1)


async def test_a_pool_at_its_cap(make: Callable[..., Harness]) -> None:
    """Five servers at max_drained 40 %: two overloaded ones drained put the pool at its cap;
    in and out of service and the floor are exported with it."""
    h = make()
    metrics = h.reconciler.metrics
    await h.tick()
    metrics.observe_round(h.reconciler.report, 0.01)
    assert get(metrics, "lbhealthd_pool_at_cap", pool="api") == 0
    assert get(metrics, "lbhealthd_pool_in_service_servers", pool="api") == 5
    assert get(metrics, "lbhealthd_pool_out_of_service_servers", pool="api") == 0
    assert get(metrics, "lbhealthd_pool_min_in_service", pool="api") == 2

    h.probes.set("s1", "s2", cpu=HOT)
    await h.tick_until(lambda: h.driver.drained() == {"s1", "s2"})
    await h.tick()  # a round's report shows the LB as it read it, before its commands
    metrics.observe_round(h.reconciler.report, 0.01)
    assert get(metrics, "lbhealthd_pool_at_cap", pool="api") == 1
    assert get(metrics, "lbhealthd_pool_in_service_servers", pool="api") == 3
    assert get(metrics, "lbhealthd_pool_out_of_service_servers", pool="api") == 2


def test_a_pool_below_its_floor_and_one_never_read() -> None:
    """Servers out by any hand count: one of three in rotation is below min_in_service 2.
    Servers not every endpoint lists are not counted; a pool never read has no such series."""
    m = Metrics()
    down = (member("s2", AdminState.MAINT), member("s3", AdminState.DRAIN))
    m.observe_round(one_pool(member("s1"), *down, member("s4"), partial=frozenset()), 0.01)
    assert get(m, "lbhealthd_pool_in_service_servers", pool="api") == 2
    m.observe_round(one_pool(member("s1"), *down, member("s4"), partial={sid("api/s4")}), 0.01)
    assert get(m, "lbhealthd_pool_in_service_servers", pool="api") == 1
    assert get(m, "lbhealthd_pool_out_of_service_servers", pool="api") == 2
    assert get(m, "lbhealthd_pool_min_in_service", pool="api") == 2
    assert get(m, "lbhealthd_pool_at_cap", pool="api") == 1

    m.observe_round(one_pool(lb_error="socket gone"), 0.01)
    assert get(m, "lbhealthd_pool_in_service_servers", pool="api") is None
    assert get(m, "lbhealthd_pool_at_cap", pool="api") is None
    assert get(m, "lbhealthd_pool_lb_available", pool="api") == 0


def test_every_probe_is_counted_once_failed_or_not() -> None:
    """``lbhealthd_probes_total`` is the denominator of the failure rate: each new sample once."""
    m = Metrics()
    s1, s2 = sid("api/s1"), sid("api/s2")
    pool = PoolReport("api", PoolSettings("api"), {s1: member("s1"), s2: member("s2")})
    for at in (1.0, 1.0, 2.0):
        samples = {s1: ok(s1, at, latency_ms=5.0), s2: failed(s2, at)}
        m.observe_round(RoundReport((pool,), samples=samples), 0.01)
    assert get(m, "lbhealthd_probes_total", pool="api") == 4
    assert get(m, "lbhealthd_probe_failures_total", pool="api", outcome="timeout") == 2


async def test_a_failed_state_write_is_counted(make: Callable[..., Harness], logs: Logs) -> None:
    """A full disk under the daemon: the ownership write of its drain fails, and the counter of
    failed writes says so by file, as the log does."""
    h = make()
    metrics = h.reconciler.metrics
    assert get(metrics, "lbhealthd_state_write_failures_total", file="owned") == 0

    def full(entries: object) -> None:
        raise StateError("No space left on device")

    h.store.save_owned = full  # type: ignore[method-assign]
    h.probes.set("s1", cpu=HOT)
    await h.tick_until(lambda: h.driver.drained() == {"s1"})
    logged = [e["file"] for e in logs if e["event"] == "state_write_failed"]
    counted = get(metrics, "lbhealthd_state_write_failures_total", file="owned")
    assert counted is not None and counted >= 1
    assert counted == logged.count("owned")


async def test_a_starved_daemon_is_exported(make: Callable[..., Harness]) -> None:
    """Rounds after an event-loop lag beyond max_loop_lag set the starved flag and the lag; a
    round without lag clears the flag."""
    h = make()
    metrics = h.reconciler.metrics
    await h.tick(starved=0.01)
    assert get(metrics, "lbhealthd_daemon_starved") == 0
    assert get(metrics, "lbhealthd_loop_lag_seconds") == 0.01
    await h.tick(starved=1.5)
    assert get(metrics, "lbhealthd_daemon_starved") == 1
    assert get(metrics, "lbhealthd_loop_lag_seconds") == 1.5
    await h.tick()
    assert get(metrics, "lbhealthd_daemon_starved") == 0
