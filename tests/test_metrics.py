"""Metrics computed after each round, and the read-only HTTP listener that exposes them."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbhealthd.daemon.http_api import HttpListener
from lbhealthd.daemon.loop import Daemon
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.engine import PoolSettings
from lbhealthd.errors import ListenerError
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Blocked,
    Decision,
    Desired,
    Member,
    OpState,
    ProbeOutcome,
    Reason,
    Rule,
    Sample,
    ServerId,
)
from lbhealthd.report import PoolReport, RoundReport
from lbhealthd.testing import FakeClock, failed, ok, sid
from tests.daemon_harness import LBView, make_config, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def member(server: str, admin: AdminState = AdminState.READY, weight: int = 100) -> Member:
    return Member(sid(server), "127.0.0.1", 8000, admin, OpState.UP, weight, 100)


def fake_reconciler(*members: Member, samples: dict[ServerId, Sample] | None = None) -> Any:
    """The public attributes Metrics reads, for pool ``api`` (no balance verdict, no audit)."""
    latest = samples if samples is not None else {}
    return SimpleNamespace(
        config=SimpleNamespace(pools=[SimpleNamespace(name="api")]),
        members={"api": {m.id: m for m in members}},
        unavailable={},
        rounds=1,
        scheduler=SimpleNamespace(latest=latest.get),
        watch=SimpleNamespace(pools={"api": SimpleNamespace(report=None, findings=[])}),
    )


def as_report(r: Any, decision: Decision | None) -> RoundReport:
    """The round report the fake reconciler's attributes describe, with ``decision``."""
    pools = tuple(
        PoolReport(
            p.name,
            PoolSettings(p.name),
            r.members[p.name],
            lb_error=r.unavailable.get(p.name),
            blind=decision is not None and p.name in decision.blind_pools,
            balance=r.watch.pools[p.name].report,
            findings=tuple(r.watch.pools[p.name].findings),
        )
        for p in r.config.pools
    )
    samples = {
        sid: s
        for pool in pools
        for sid in pool.members
        if (s := r.scheduler.latest(sid)) is not None
    }
    desired = decision.desired if decision is not None else {}
    return RoundReport(pools, rounds=r.rounds, decision=decision, desired=desired, samples=samples)


def get(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def reason(rule: Rule) -> Reason:
    return Reason(rule, f"because of {rule.value}")


# --- metrics from a fake reconciler ------------------------------------------------------------


def test_a_vanished_server_loses_its_series() -> None:
    """Every series labelled with a server is removed once the server leaves its pool."""
    m = Metrics()
    s1, s2 = sid("api/s1"), sid("api/s2")
    r = fake_reconciler(
        member("api/s1"),
        member("api/s2", AdminState.DRAIN),
        samples={s1: ok(s1, 1.0, cpu=0.2), s2: ok(s2, 1.0, cpu=0.95)},
    )
    desired = {s1: Desired(AdminState.READY), s2: Desired(AdminState.DRAIN)}
    m.observe_round(as_report(r, Decision(desired)), 0.01)
    assert get(m, "lbhealthd_server_state", pool="api", server="s2", state="drain") == 1
    assert get(m, "lbhealthd_server_signal", pool="api", server="s2", signal="cpu") == 0.95

    r.members = {"api": {s1: member("api/s1")}}
    r.rounds = 2
    m.observe_round(as_report(r, Decision({s1: Desired(AdminState.READY)})), 0.01)

    labelled = [s.labels for f in m.registry.collect() for s in f.samples]
    assert not [labels for labels in labelled if labels.get("server") == "s2"]
    assert get(m, "lbhealthd_server_weight", pool="api", server="s1") == 100
    assert get(m, "lbhealthd_pool_drained", pool="api") == 0
    assert get(m, "lbhealthd_rounds_total") == 2


def test_server_series_agree_with_the_pool_series_of_the_same_round() -> None:
    """A scrape during a round shows every series as the last round left them: a server the
    round under way has already read in DRAIN is not shown drained before its pool's count."""
    m = Metrics()
    s1 = sid("api/s1")
    r = fake_reconciler(member("api/s1"), samples={s1: ok(s1, 1.0, cpu=0.2)})
    m.observe_round(as_report(r, Decision({s1: Desired(AdminState.READY)})), 0.01)
    r.members = {"api": {s1: member("api/s1", AdminState.DRAIN)}}  # read by the next round
    r.scheduler = SimpleNamespace(latest={s1: ok(s1, 2.0, cpu=0.97)}.get)
    assert get(m, "lbhealthd_server_state", pool="api", server="s1", state="drain") == 0
    assert get(m, "lbhealthd_pool_drained", pool="api") == 0
    assert get(m, "lbhealthd_server_signal", pool="api", server="s1", signal="cpu") == 0.2
    m.observe_round(as_report(r, Decision({s1: Desired(AdminState.DRAIN)})), 0.01)
    assert get(m, "lbhealthd_server_state", pool="api", server="s1", state="drain") == 1
    assert get(m, "lbhealthd_pool_drained", pool="api") == 1
    assert get(m, "lbhealthd_server_signal", pool="api", server="s1", signal="cpu") == 0.97


def test_a_pool_removed_from_the_config_loses_its_series() -> None:
    """Counters and histograms of a pool that left the config are removed with it."""
    m = Metrics()
    s1 = sid("api/s1")
    r = fake_reconciler(member("api/s1"), samples={s1: failed(s1, 1.0)})
    m.observe_round(as_report(r, Decision({s1: Desired(AdminState.READY)})), 0.01)
    assert get(m, "lbhealthd_probe_failures_total", pool="api", outcome="timeout") == 1

    r.config = SimpleNamespace(pools=[])
    r.members = {}
    m.observe_round(as_report(r, Decision({})), 0.01)
    assert [s for f in m.registry.collect() for s in f.samples if "pool" in s.labels] == []


def test_each_probe_is_observed_once() -> None:
    """The latency histogram and the failure counter count a sample once, however many rounds
    see it as the latest."""
    m = Metrics()
    s1 = sid("api/s1")
    samples: dict[ServerId, Sample] = {s1: ok(s1, 1.0, latency_ms=20.0)}
    r = fake_reconciler(member("api/s1"), samples=samples)
    m.observe_round(as_report(r, None), 0.01)
    m.observe_round(as_report(r, None), 0.01)
    assert get(m, "lbhealthd_probe_latency_seconds_count", pool="api") == 1
    assert get(m, "lbhealthd_probe_latency_seconds_sum", pool="api") == pytest.approx(0.02)

    samples[s1] = failed(s1, 2.0, ProbeOutcome.REFUSED)
    m.observe_round(as_report(r, None), 0.01)
    m.observe_round(as_report(r, None), 0.01)
    assert get(m, "lbhealthd_probe_latency_seconds_count", pool="api") == 1  # no latency
    assert get(m, "lbhealthd_probe_failures_total", pool="api", outcome="refused") == 1
    assert get(m, "lbhealthd_server_signal", pool="api", server="s1", signal="latency_ms") is None


def test_decisions_are_counted_decided_enforced_and_blocked() -> None:
    """A decided action counts in its round; a block counts once while it lasts; enforced is
    counted when the reconciler reports the LB command succeeded."""
    m = Metrics()
    s1, s2 = sid("api/s1"), sid("api/s2")
    r = fake_reconciler(member("api/s1"), member("api/s2"))
    drain = Action(s1, ActionKind.DRAIN, reason(Rule.FALL))
    capped = Blocked(s2, ActionKind.DRAIN, reason(Rule.MAX_DRAINED))
    desired = {s1: Desired(AdminState.DRAIN), s2: Desired(AdminState.READY)}
    m.observe_round(as_report(r, Decision(desired, actions=(drain,), blocked=(capped,))), 0.01)
    m.enforced(s1, ActionKind.DRAIN, Rule.FALL)
    m.observe_round(as_report(r, Decision(desired, blocked=(capped,))), 0.01)
    m.observe_round(as_report(r, Decision(desired)), 0.01)
    m.observe_round(as_report(r, Decision(desired, blocked=(capped,))), 0.01)

    def count(result: str, rule: str) -> float | None:
        labels = {"pool": "api", "action": "drain", "rule": rule, "result": result}
        return get(m, "lbhealthd_decisions_total", **labels)

    assert count("decided", "fall") == 1
    assert count("enforced", "fall") == 1
    assert count("blocked", "max_drained") == 2  # two separate blocks
    assert get(m, "lbhealthd_server_desired_in_service", pool="api", server="s1") == 0
    assert get(m, "lbhealthd_server_desired_in_service", pool="api", server="s2") == 1


def test_lb_commands_retries_and_pool_gauges() -> None:
    """Commands by result, retries, the blind flag, an unreadable pool and the balance ratio
    (NaN while there is no verdict)."""
    m = Metrics(wall=lambda: 1234.5)
    s1 = sid("api/s1")
    r = fake_reconciler(member("api/s1"))
    m.lb_command(True)
    m.lb_command(False)
    m.lb_command(True)
    m.retry()
    m.observe_round(
        as_report(r, Decision({s1: Desired(AdminState.READY)}, blind_pools=frozenset({"api"}))), 0.3
    )
    assert get(m, "lbhealthd_lb_commands_total", result="ok") == 2
    assert get(m, "lbhealthd_lb_commands_total", result="error") == 1
    assert get(m, "lbhealthd_lb_retries_total") == 1
    assert get(m, "lbhealthd_pool_blind", pool="api") == 1
    assert get(m, "lbhealthd_pool_lb_available", pool="api") == 1
    assert math.isnan(get(m, "lbhealthd_pool_balance_ratio", pool="api") or 0.0)
    assert get(m, "lbhealthd_last_round_timestamp_seconds") == 1234.5
    assert get(m, "lbhealthd_round_duration_seconds_count") == 1

    r.unavailable = {"api": "socket gone"}
    r.watch.pools["api"] = SimpleNamespace(
        report=SimpleNamespace(imbalance=1.8, firing=True, misweighted={"s3": (1, 100)}),
        findings=["one", "two"],
    )
    m.observe_round(as_report(r, Decision({})), 0.1)
    assert get(m, "lbhealthd_pool_lb_available", pool="api") == 0
    assert get(m, "lbhealthd_pool_balance_ratio", pool="api") == 1.8
    assert get(m, "lbhealthd_pool_balance_alert", pool="api") == 1
    assert get(m, "lbhealthd_pool_audit_findings", pool="api") == 2


def test_metrics_use_their_own_registry() -> None:
    """Two Metrics side by side (a daemon and a test) do not collide."""
    a, b = Metrics(), Metrics()
    a.retry()
    assert get(a, "lbhealthd_lb_retries_total") == 1
    assert get(b, "lbhealthd_lb_retries_total") == 0


# --- the listener with a fake daemon -----------------------------------------------------------


@contextlib.asynccontextmanager
async def listening(daemon: Any, metrics: Metrics) -> AsyncIterator[str]:
    """An HttpListener on a free loopback port; yields its base URL."""
    listener = HttpListener(daemon, f"127.0.0.1:{free_port()}", metrics)
    await listener.start()
    try:
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        await listener.close()


class FakeDaemon:
    """What the listener reads of a daemon, set by the test."""

    def __init__(self, clock: FakeClock) -> None:
        self.report = RoundReport((), rounds=0)
        self.round_interval = 1.0
        self.stopping_now = False
        self.mono = self.wall = clock

    def round_done(self, at: float, rounds: int) -> None:
        self.report = RoundReport((), rounds=rounds, finished_at=at)


def fake_daemon(clock: FakeClock) -> Any:
    return FakeDaemon(clock)


async def test_healthz_follows_the_rounds() -> None:
    """503 before the first round, 200 after a recent one, 503 once rounds stall for
    max(3 × round_interval, 5 s), and 503 while stopping."""
    clock = FakeClock()
    daemon = fake_daemon(clock)
    async with listening(daemon, Metrics()) as url, aiohttp.ClientSession() as http:

        async def healthz() -> tuple[int, dict[str, Any]]:
            async with http.get(f"{url}/healthz") as resp:
                return resp.status, await resp.json()

        status, doc = await healthz()
        assert (status, doc["ok"], doc["reason"]) == (503, False, "no round has completed yet")

        daemon.round_done(clock.now, 1)
        clock.advance(4.0)
        assert await healthz() == (
            200,
            {"ok": True, "last_round_age_s": 4.0, "rounds": 1, "config_reload_ok": True},
        )

        clock.advance(1.5)
        status, doc = await healthz()
        assert (status, doc["ok"]) == (503, False)
        assert "5.5s ago (limit 5s)" in doc["reason"]

        daemon.round_done(clock.now, 1)
        daemon.stopping_now = True
        status, doc = await healthz()
        assert (status, doc["reason"]) == (503, "the daemon is stopping")


async def test_listener_is_read_only() -> None:
    """Only GET (and HEAD) are served; other methods get 405, unknown paths 404."""
    async with listening(fake_daemon(FakeClock()), Metrics()) as url, aiohttp.ClientSession() as h:
        for method, path, expected in [
            ("POST", "/status", 405),
            ("PUT", "/metrics", 405),
            ("DELETE", "/healthz", 405),
            ("HEAD", "/metrics", 200),
            ("GET", "/drain", 404),
        ]:
            async with h.request(method, f"{url}{path}") as resp:
                assert resp.status == expected, (method, path)


async def test_metrics_endpoint_speaks_prometheus_and_openmetrics() -> None:
    """/metrics answers the text format by default and OpenMetrics when asked for it."""
    m = Metrics()
    m.retry()
    async with listening(fake_daemon(FakeClock()), m) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert value(parse(await resp.text()), "lbhealthd_lb_retries_total") == 1
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(f"{url}/metrics", headers=accept) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).endswith("# EOF\n")


async def test_bind_failure_names_the_address() -> None:
    """A port already in use gives a ListenerError that names the address and the config key."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listener = HttpListener(fake_daemon(FakeClock()), address, Metrics())
        with pytest.raises(ListenerError, match=rf"cannot listen on {address} \(daemon.http\)"):
            await listener.start()
        assert listener.port is None


# --- the real daemon against a real HAProxy ----------------------------------------------------


async def _feed(daemon: Daemon, metrics: Metrics) -> None:
    """Stands in for the daemon's own call: observe every round once it completes."""
    seen = 0
    while True:
        r = daemon.reconciler
        if r.rounds > seen:
            seen = r.rounds
            metrics.observe_round(r.report, 0.0)
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def exposed(daemon: Daemon, metrics: Metrics) -> AsyncIterator[str]:
    """Metrics fed from the running daemon and served on a free loopback port."""
    listener = HttpListener(daemon, f"127.0.0.1:{free_port()}", metrics)
    await listener.start()
    feeder = asyncio.create_task(_feed(daemon, metrics), name="metrics feeder")
    try:
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await listener.close()


@pytest.mark.integration
async def test_a_drain_shows_in_metrics_healthz_and_status(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """An overloaded server drained by the real daemon shows in a scrape of /metrics, in
    /status, and /healthz is 200 while rounds run and 503 once the daemon stops."""
    lb = LBView(haproxy.socket)
    # Its own control socket and HTTP port: other daemons (other tests) may hold the defaults.
    own = {"control_socket": str(tmp_path / "control.sock"), "http": f"127.0.0.1:{free_port()}"}
    config = make_config([haproxy.socket], tmp_path / "state", daemon=own)
    metrics = Metrics()
    async with (
        aiohttp.ClientSession() as http,
        running(config) as daemon,
        exposed(daemon, metrics) as url,
    ):

        async def scrape() -> Samples:
            async with http.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                return parse(await resp.text())

        async def healthz() -> tuple[int, dict[str, Any]]:
            async with http.get(f"{url}/healthz") as resp:
                return resp.status, await resp.json()

        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        api_servers.set(0, cpu=0.97)

        async def drained_in_metrics() -> Samples | None:
            samples = await scrape()
            state = value(samples, "lbhealthd_server_state", pool="api", server="s1", state="drain")
            return samples if state == 1 else None

        samples = await wait_for(drained_in_metrics, 5, "s1 drained in /metrics")
        assert await lb.drained() == {"s1"}

        def s1(name: str, **labels: str) -> float | None:
            return value(samples, name, pool="api", server="s1", **labels)

        assert s1("lbhealthd_server_state", state="ready") == 0
        assert s1("lbhealthd_server_desired_in_service") == 0
        assert s1("lbhealthd_server_weight") == 100
        assert s1("lbhealthd_server_signal", signal="cpu") == pytest.approx(0.97)
        decided = {"pool": "api", "action": "drain", "rule": "fall", "result": "decided"}
        assert (value(samples, "lbhealthd_decisions_total", **decided) or 0) >= 1
        assert (value(samples, "lbhealthd_probe_latency_seconds_count", pool="api") or 0) > 0
        assert value(samples, "lbhealthd_pool_blind", pool="api") == 0
        assert value(samples, "lbhealthd_pool_drained", pool="api") == 1
        assert (value(samples, "lbhealthd_rounds_total") or 0) >= 2

        status, doc = await healthz()
        assert (status, doc["ok"]) == (200, True)

        async with http.get(f"{url}/status") as resp:
            assert resp.status == 200
            document = await resp.json()
        (pool,) = document["pools"]
        drained = [s["server"] for s in pool["servers"] if s["lb_state"] == "drain"]
        assert drained == ["api/s1"]

        async with http.post(f"{url}/status") as resp:
            assert resp.status == 405

        daemon.stopping.set()
        status, doc = await healthz()
        assert (status, doc["ok"], doc["reason"]) == (503, False, "the daemon is stopping")


async def test_healthz_is_503_before_the_first_round(tmp_path: Path) -> None:
    """A real daemon that has not completed a round yet is not healthy."""
    daemon = Daemon(make_config([f"unix:{tmp_path}/haproxy.sock"], tmp_path / "state"))
    try:
        async with (
            exposed(daemon, Metrics()) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/healthz") as resp,
        ):
            assert resp.status == 503
            assert (await resp.json())["reason"] == "no round has completed yet"
    finally:
        await daemon.close()
