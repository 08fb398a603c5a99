"""The reconciler driven in memory: a MemoryDriver for the LB, FakeProbes for the servers, fake
clocks for loop and wall time, a real Store in tmp_path. Deterministic; nothing sleeps.

Each round advances both clocks by ``step`` (0.2 s, the probe interval of the test config) and
every server answers a new sample. The config is the integration tests' (fall 3, rise 2,
min_drain 1 s, slow_start 1 s, max_drained 40 %, min_in_service 2, cpu marks 0.9/0.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import pytest

from lbhealthd import status
from lbhealthd.config import Config
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.daemon.reconciler import Reconciler
from lbhealthd.drivers.memory import MemoryDriver, MemoryServer
from lbhealthd.errors import StateError
from lbhealthd.model import (
    AdminState,
    Decision,
    Override,
    OverrideKind,
    PoolSnapshot,
    Rule,
    ServerId,
)
from lbhealthd.oncall import commands as oncall
from lbhealthd.oncall import direct
from lbhealthd.probes.scheduler import ProbeScheduler
from lbhealthd.store import Store
from lbhealthd.testing import FakeClock, FakeProbes, memory_pool
from tests.daemon_harness import make_config
from tests.other_user import NOBODY, in_child, needs_root, shared_dir

Logs = list[MutableMapping[str, Any]]

SOCKET = "unix:/nonexistent/haproxy.sock"  # the driver is injected: never opened
STEP = 0.2
HOT, WARM, COOL = 0.97, 0.75, 0.1  # cpu: overloaded, in the band, healthy
ALL = ("s1", "s2", "s3", "s4", "s5")


def sid(name: str) -> ServerId:
    return ServerId("api", name)


class Harness:
    """One daemon's worth of parts around a Reconciler; ``start`` is the one place it is built."""

    def __init__(self, tmp_path: Path, driver: MemoryDriver | None = None, **pool: Any) -> None:
        self.tmp_path = tmp_path
        self.mono = FakeClock(1000.0)
        self.wall = FakeClock(1_700_000_000.0)
        self.config = self.make_config(**pool)
        self.driver = driver if driver is not None else memory_pool("api", 5, weight=100)
        marks = {k: (m.high, m.low) for k, m in self.config.pools[0].overload.items()}
        self.probes = FakeProbes(self.mono, pool="api", marks=marks)
        self.store = Store.open(self.config.daemon.state_dir, clock=self.wall)
        self.reconciler = self.start()

    def make_config(self, **pool: Any) -> Config:
        return make_config([SOCKET], self.tmp_path / "state", **pool)

    def start(self) -> Reconciler:
        """A Reconciler on this harness's config, driver, store, probes and clocks."""
        # The reconciler is typed with the real scheduler; FakeProbes has the methods it calls.
        scheduler = cast(ProbeScheduler, self.probes)
        return Reconciler(
            self.config, self.driver, self.store, scheduler, mono=self.mono, wall=self.wall
        )

    def restart_daemon(self) -> None:
        """A new daemon on the same state_dir, LB and servers (the old one is simply gone)."""
        self.store = Store.open(self.config.daemon.state_dir, clock=self.wall)
        self.reconciler = self.start()

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.advance(seconds)

    async def tick(self, n: int = 1, *, step: float = STEP, starved: float = 0.0) -> Decision:
        """Run ``n`` rounds, ``step`` seconds apart; return the last round's decision."""
        decision = None
        for _ in range(n):
            self.advance(step)
            decision = await self.reconciler.tick(starved)
        assert decision is not None
        return decision

    async def tick_until(self, check: Callable[[], bool], limit: int = 50) -> int:
        """Run rounds until ``check()`` holds; return how many it took."""
        for n in range(1, limit + 1):
            await self.tick()
            if check():
                return n
        raise AssertionError(f"not reached in {limit} rounds")

    async def crash_at_gate(self, limit: int = 50) -> None:
        """Run rounds until one waits at the driver's gate, then kill it there (a SIGKILL:
        nothing after that point of the round runs)."""
        for _ in range(limit):
            self.advance(STEP)
            task = asyncio.create_task(self.reconciler.tick())
            held = asyncio.create_task(self.driver.held())
            await asyncio.wait({task, held}, return_when=asyncio.FIRST_COMPLETED)
            if held.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.driver.release()
                return
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held
            task.result()
        raise AssertionError(f"no round reached the gate in {limit} rounds")

    def actions(self, action: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.store.read_actions() if action is None or a["action"] == action]

    def override(self, name: str, kind: OverrideKind, expires_in: float | None = None) -> None:
        wall = self.wall()
        expires = None if expires_in is None else wall + expires_in
        self.store.put_override(Override(sid(name), kind, "test", "oncall", wall, expires))


def events(logs: Logs, name: str, server: str | None = None) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name and (server is None or e["server"] == server)]


# --- drains, restores, caps ------------------------------------------------------------------


async def test_overloaded_servers_are_drained_and_the_rest_untouched(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """Two overloaded servers go to DRAIN in the fall-th round; the other three stay READY."""
    h = make()
    h.probes.set("s1", cpu=0.97)
    h.probes.set("s2", cpu=0.95)
    await h.tick(2)
    assert h.driver.drained() == set()
    await h.tick()
    assert h.driver.drained() == {"s1", "s2"}
    assert sorted(h.driver.sent()) == [("s1", "drain"), ("s2", "drain")]
    await h.tick(10)
    assert h.driver.states() == {
        "s1": AdminState.DRAIN,
        "s2": AdminState.DRAIN,
        "s3": AdminState.READY,
        "s4": AdminState.READY,
        "s5": AdminState.READY,
    }
    assert len(h.driver.commands) == 2  # level-triggered: nothing re-sent once converged
    sets = h.actions("set_state")
    assert {(a["server"], a["value"], a["rule"]) for a in sets} == {
        ("api/s1", "drain", "fall"),
        ("api/s2", "drain", "fall"),
    }
    assert {e["server"] for e in events(logs, "server_drained")} == {"api/s1", "api/s2"}


async def test_recovered_servers_return_with_slow_start(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A recovered server returns after min_drain at a low weight that rises one step a round
    to its full weight, and is then no longer lbhealthd's."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    drained_at = h.mono()
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    assert h.mono() - drained_at >= 1.0  # min_drain
    weights = [h.driver.weights()["s1"]]
    while weights[-1] < 100:
        sent = len(h.driver.commands)
        await h.tick()
        assert len(h.driver.commands) - sent <= 1  # one step a round
        weights.append(h.driver.weights()["s1"])
        assert len(weights) < 20
    assert weights[0] <= 10 and weights == sorted(set(weights)), weights
    assert len(weights) >= 4  # a ramp, not a jump
    assert h.driver.sent("state") == [("s1", "drain"), ("s1", "ready")]
    (done,) = events(logs, "slow_start_done", "api/s1")
    assert h.store.load_owned() == {}
    restored = events(logs, "server_restored", "api/s1")
    assert [e["rule"] for e in restored] == ["rise"]
    # One line when the ramp starts (its first weight, then ready) and one when it ends; the
    # steps between at debug level, counted in the action log's record of the end.
    weight_lines = [e for e in events(logs, "lb_command", "api/s1") if e["set"] == "weight"]
    levels = [e["log_level"] for e in weight_lines]
    steps = len(weights) - 2
    assert levels == ["info"] + ["debug"] * steps + ["info"], levels
    assert done["steps"] == steps
    recorded = [(a["action"], a.get("value")) for a in h.actions() if a["server"] == "api/s1"]
    assert recorded == [
        ("set_state", "drain"),
        ("set_weight", weights[0]),
        ("set_state", "ready"),
        ("set_weight", 100),
        ("slow_start_done", 100),
    ], recorded


async def test_cap_drains_only_the_worst_two(make: Callable[..., Harness], logs: Logs) -> None:
    """Four of five overloaded at max_drained 40 %: the worst two go out, never a third; the
    other two are reported blocked by max_drained."""
    h = make()
    for name, cpu in zip(("s1", "s2", "s3", "s4"), (0.91, 0.99, 0.92, 0.98), strict=True):
        h.probes.set(name, cpu=cpu)
    decision = await h.tick(3)
    assert h.driver.drained() == {"s2", "s4"}
    assert {(b.server.server, b.kind.value, b.reason.rule.value) for b in decision.blocked} == {
        ("s1", "drain", "max_drained"),
        ("s3", "drain", "max_drained"),
    }
    await h.tick(15)
    assert h.driver.drained() == {"s2", "s4"}
    blocked = events(logs, "drain_blocked")
    assert {e["server"] for e in blocked} == {"api/s1", "api/s3"}
    assert {e["rule"] for e in blocked} == {"max_drained"}
    assert len(blocked) == 2  # said when the block starts, not every round
    assert blocked[0]["evidence"]["max_out"] == 2


async def test_a_drain_the_rest_cannot_carry_is_blocked_by_capacity(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """capacity_signal cpu (marks 0.9/0.6), equal weights: s1 at 1.2 while the four others are
    at 0.85 is not drained, (1.2 + 4 x 0.85) / 4 = 1.15 >= 0.9, and status, the log and the
    metrics say so with rule capacity; once the others are at 0.3 (2.4 / 4 = 0.6) it is."""
    h = make(capacity_signal="cpu")
    h.probes.set("s1", cpu=1.2)
    h.probes.set("s2", "s3", "s4", "s5", cpu=0.85)
    decision = await h.tick(3)
    assert h.driver.drained() == set()
    [blocked] = decision.blocked
    assert (blocked.server.server, blocked.reason.rule) == ("s1", Rule.CAPACITY)
    assert blocked.reason.evidence["projected"] == pytest.approx(1.15)
    doc = status.document(h.reconciler.report, h.wall(), h.mono())
    [s1] = [s for s in doc["pools"][0]["servers"] if s["server"] == "api/s1"]
    assert s1["blocked"]["rule"] == "capacity"
    assert "projected 1.15 >= high 0.9" in s1["blocked"]["reason"]
    assert "blocked (capacity)" in status.render(json.loads(json.dumps(doc)))
    [logged] = events(logs, "drain_blocked", "api/s1")
    assert logged["rule"] == "capacity" and logged["evidence"]["projected"] == pytest.approx(1.15)
    metrics = Metrics()
    metrics.observe_round(h.reconciler.report, 0.01)
    labels = {"pool": "api", "action": "drain", "rule": "capacity", "result": "blocked"}
    assert metrics.registry.get_sample_value("lbhealthd_decisions_total", labels) == 1

    h.probes.set("s2", "s3", "s4", "s5", cpu=0.3)
    decision = await h.tick()
    assert h.driver.drained() == {"s1"}
    [action] = decision.actions
    assert action.reason.evidence["projected"] == pytest.approx(0.6)


async def test_band_neither_drains_nor_restores(make: Callable[..., Harness]) -> None:
    """Load between the marks keeps a drained server out and a serving one in; healthy and
    overloaded samples then move them."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    h.probes.set("s1", "s2", cpu=WARM)
    await h.tick(25)
    assert h.driver.drained() == {"s1"}
    assert h.driver.sent("state") == [("s1", "drain")]
    h.probes.set("s1", cpu=COOL)
    h.probes.set("s2", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s2"}


async def test_blind_pool_drains_nothing(make: Callable[..., Harness], logs: Logs) -> None:
    """Every probe failing at once is the daemon's blindness: it drains nothing and says so."""
    h = make()
    await h.tick(2)
    h.probes.fail(*ALL)
    decision = await h.tick(15)
    assert decision.blind_pools == {"api"}
    assert h.driver.drained() == set()
    assert h.driver.commands == []
    assert not events(logs, "lb_command")
    assert len(events(logs, "pool_blind")) == 1


async def test_one_failing_server_is_drained(make: Callable[..., Harness], logs: Logs) -> None:
    """The blind test's control: one server whose probes fail is drained after fall rounds."""
    h = make()
    await h.tick(2)
    h.probes.fail("s1")
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    assert events(logs, "lb_command", "api/s1")
    assert not events(logs, "pool_blind")


# --- operators ------------------------------------------------------------------------------


async def test_operator_maint_is_never_touched(make: Callable[..., Harness]) -> None:
    """A server put in MAINT by hand stays there, sick or healthy, while the daemon drains
    another overloaded server next to it."""
    h = make()
    h.driver.set_by_hand("s3", admin=AdminState.MAINT)
    h.probes.set("s3", "s4", cpu=HOT)
    await h.tick(15)
    assert h.driver.states()["s3"] is AdminState.MAINT
    assert h.driver.drained() == {"s4"}  # the daemon does act on the others
    h.probes.set("s3", cpu=COOL)
    await h.tick(15)
    assert h.driver.states()["s3"] is AdminState.MAINT
    assert [c.server.server for c in h.driver.commands] == ["s4"]
    assert "api/s3" not in {str(s) for s in h.store.load_owned()}


async def test_operator_restore_by_hand_is_not_fought(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drained server put back by hand stays in under a keep-in override; when that expires
    the ordinary rules drain it again."""
    h = make(daemon={"manual_change_hold": "2s"})
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    h.driver.set_by_hand("s1", admin=AdminState.READY)
    await h.tick(5)  # 1 s of the 2 s hold
    assert h.driver.states()["s1"] is AdminState.READY
    assert [e["server"] for e in events(logs, "operator_changed_state")] == ["api/s1"]
    (keep,) = h.store.load_overrides().values()
    assert (keep.server, keep.kind) == (sid("s1"), OverrideKind.READY)
    assert keep.expires_at == pytest.approx(keep.created_at + 2.0)
    assert h.store.load_owned() == {}
    assert [e["rule"] for e in events(logs, "drain_blocked", "api/s1")] == ["override"]
    assert any(a["action"] == "released" for a in h.actions())
    await h.tick_until(lambda: h.driver.drained() == {"s1"})
    assert h.wall() >= keep.created_at + 2.0
    assert events(logs, "override_expired", "api/s1")
    assert h.store.load_overrides() == {}
    assert h.driver.sent("state") == [("s1", "drain"), ("s1", "drain")]


async def test_dry_run_changes_nothing(make: Callable[..., Harness], logs: Logs) -> None:
    """In dry-run the drain is decided and logged as skipped; no command reaches the LB."""
    h = make(daemon={"dry_run": True})
    h.probes.set("s1", cpu=HOT)
    await h.tick(10)
    drained = events(logs, "server_drained", "api/s1")
    assert drained and drained[0]["dry_run"] is True
    assert len(events(logs, "dry_run_skipped", "api/s1")) == 1
    assert not events(logs, "lb_command")
    assert h.driver.commands == [] and h.driver.drained() == set()
    assert h.store.load_owned() == {}


async def test_without_dry_run_the_same_drain_is_sent(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The dry-run test's twin: the same setup, live, sends the drain."""
    h = make(daemon={"dry_run": False})
    h.probes.set("s1", cpu=HOT)
    await h.tick(10)
    assert [e["server"] for e in events(logs, "lb_command")] == ["api/s1"]
    assert not events(logs, "dry_run_skipped")
    assert h.driver.drained() == {"s1"}


# --- HA pairs -------------------------------------------------------------------------------


async def test_ha_pair_both_receive_each_change(make: Callable[..., Harness], logs: Logs) -> None:
    """A drain reaches both endpoints; one endpoint changed alone is repaired, not taken for
    an operator's change, which the same change on both endpoints is."""
    h = make(memory_pool("api", 5, endpoints=2))
    h.probes.set("s5", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained(endpoint=0) == h.driver.drained(endpoint=1) == {"s5"}
    assert [c.endpoints for c in h.driver.commands] == [(0, 1)]
    h.driver.set_by_hand("s5", admin=AdminState.READY, endpoint=1)
    await h.tick()
    assert h.driver.drained(endpoint=1) == {"s5"}
    assert not events(logs, "operator_changed_state")
    assert h.store.load_overrides() == {}
    h.driver.set_by_hand("s5", admin=AdminState.READY)  # both endpoints: an operator's doing
    await h.tick()
    assert [e["server"] for e in events(logs, "operator_changed_state")] == ["api/s5"]
    assert h.driver.drained(endpoint=0) == h.driver.drained(endpoint=1) == set()


async def test_half_applied_drain_on_an_ha_pair_is_repaired_then_undone(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drain that reached one endpoint of a pair fails, reaches the other the next round,
    and both are restored to full weight once the server is healthy."""
    h = make(memory_pool("api", 5, endpoints=2))
    h.probes.set("s1", cpu=HOT)
    await h.tick(2)
    h.driver.fail_endpoint(1, calls=1)
    await h.tick()
    assert (h.driver.drained(endpoint=0), h.driver.drained(endpoint=1)) == ({"s1"}, set())
    assert events(logs, "lb_command_failed", "api/s1")
    await h.tick()
    assert h.driver.drained(endpoint=1) == {"s1"}
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.store.load_owned() == {})
    for ep in (0, 1):
        assert h.driver.states(endpoint=ep)["s1"] is AdminState.READY
        assert h.driver.weights(endpoint=ep)["s1"] == 100
    assert not events(logs, "operator_changed_state")


async def test_drain_made_while_one_endpoint_is_down_reaches_it_when_it_returns(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """One HAProxy of a pair is down while a drain is made: the drain lands on the other, is
    given up on the first, reaches it once it is back (state lost), and is undone on both."""
    h = make(memory_pool("api", 5, endpoints=2))
    await h.tick(2)
    h.driver.stop_endpoint(1)
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained(endpoint=0) == {"s1"}
    assert events(logs, "lb_command_failed", "api/s1")
    await h.tick(2)  # still down: tried again each round, no crash
    h.driver.start_endpoint(1)
    await h.tick()
    assert h.driver.drained(endpoint=1) == {"s1"}
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.store.load_owned() == {})
    assert h.driver.drained(endpoint=0) == h.driver.drained(endpoint=1) == set()
    assert h.driver.weights(endpoint=1)["s1"] == 100


async def test_an_ha_pair_listing_different_servers_drains_nothing(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """One HAProxy of the pair lists s1-s5, the other t1-t5; four of s1-s4 are overloaded at
    max_drained 40 %. The pool is inconsistent: nothing is drained (a cap on the union of ten
    would let four of five go), no command is sent (none would reach a server on both), and
    it is reported: a warning in the decision, `pool_inconsistent` logged once, an alert in
    status, whose counts leave out what only one endpoint lists. Once both list s1-s5, the
    worst two go out, as in any pool of five."""
    servers = [MemoryServer(f"s{i}", port=8000 + i) for i in range(1, 6)]
    servers += [MemoryServer(f"t{i}", port=9000 + i) for i in range(1, 6)]
    driver = MemoryDriver({"api": servers}, endpoints=2)
    for i in range(1, 6):
        driver.del_server(f"t{i}", endpoint=0)
        driver.del_server(f"s{i}", endpoint=1)
    h = make(driver)
    for name, cpu in zip(("s1", "s2", "s3", "s4"), (0.91, 0.99, 0.92, 0.98), strict=True):
        h.probes.set(name, cpu=cpu)
    decision = await h.tick(10)
    assert driver.commands == []
    assert not events(logs, "lb_command_failed") and not events(logs, "server_drained")
    assert decision.inconsistent_pools == {"api"}
    (warning,) = decision.warnings
    assert warning.rule is Rule.INCONSISTENT
    assert warning.evidence["servers"] == [f"{c}{i}" for c in "st" for i in range(1, 6)]
    assert {(b.server.server, b.reason.rule) for b in decision.blocked} == {
        (name, Rule.INCONSISTENT) for name in ("s1", "s2", "s3", "s4")
    }
    assert len(events(logs, "pool_inconsistent")) == 1
    (pool,) = status.document(h.reconciler.report, h.wall(), h.mono())["pools"]
    assert pool["inconsistent"] and "inconsistent" in [a["rule"] for a in pool["alerts"]]
    assert (pool["size"], pool["out"], pool["max_out"]) == (0, 0, 0)

    driver.restart(1)  # the second HAProxy reloaded with the first one's servers
    for i in range(1, 6):
        driver.del_server(f"t{i}", endpoint=1)
    decision = await h.tick()
    assert driver.drained(endpoint=0) == driver.drained(endpoint=1) == {"s2", "s4"}
    assert decision.inconsistent_pools == frozenset()
    assert len(events(logs, "pool_consistent")) == 1
    (pool,) = status.document(h.reconciler.report, h.wall(), h.mono())["pools"]
    assert not pool["inconsistent"] and (pool["size"], pool["max_out"]) == (5, 2)


async def test_a_drain_made_before_the_pair_disagreed_is_kept_until_it_agrees(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """s1 is drained; then one HAProxy of the pair loses s5. s1, healthy again, is not
    restored while the pair disagrees (rule inconsistent); once both lack s5, it is."""
    h = make(memory_pool("api", 5, endpoints=2))
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.driver.del_server("s5", endpoint=1)
    h.probes.set("s1", cpu=COOL)
    decision = await h.tick(15)
    assert h.driver.drained(endpoint=0) == h.driver.drained(endpoint=1) == {"s1"}
    assert [(b.server.server, b.kind.value, b.reason.rule) for b in decision.blocked] == [
        ("s1", "restore", Rule.INCONSISTENT)
    ]
    assert h.driver.sent("state") == [("s1", "drain")]
    h.driver.del_server("s5", endpoint=0)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    assert h.driver.states(endpoint=1)["s1"] is AdminState.READY
    assert not events(logs, "lb_command_failed")


# --- servers missing from a read -----------------------------------------------------------


async def test_a_drained_server_missing_from_one_read_stays_drained(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drained, still overloaded server missing from one read of the LB is back drained the
    next: no restore, no command. Once healthy, it returns as any drain does: through rise,
    after its hold, at a slow-start weight. A server in service that stays missing is
    forgotten after absent_grace."""
    h = make(min_drain="2s", absent_grace="1s")
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    drained_at = h.mono()
    h.driver.hide("s1")
    h.driver.hide("s2", reads=100)
    await h.tick()
    assert [e["server"] for e in events(logs, "server_vanished")] == ["api/s1", "api/s2"]
    assert sid("s2") in h.reconciler.state.servers
    await h.tick(5)
    assert sid("s2") not in h.reconciler.state.servers
    assert h.driver.drained() == {"s1"}
    assert h.driver.sent() == [("s1", "drain")]
    assert not events(logs, "server_restored")
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    assert h.mono() - drained_at >= 2.0
    assert [e["rule"] for e in events(logs, "server_restored", "api/s1")] == ["rise"]
    assert h.driver.weights()["s1"] < 100


# --- restarts and crashes -------------------------------------------------------------------


async def test_restarted_lb_gets_its_drains_back(make: Callable[..., Harness], logs: Logs) -> None:
    """The LB lost its runtime state (a new epoch): the daemon re-applies its drain at once."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.driver.restart()
    assert h.driver.drained() == set()
    await h.tick()
    assert h.driver.drained() == {"s1"}
    (restarted,) = events(logs, "lb_restarted")
    assert restarted["owned"] == ["api/s1"]
    assert not events(logs, "operator_changed_state")


async def test_daemon_restart_keeps_its_drains(make: Callable[..., Harness]) -> None:
    """A new daemon on the same state_dir keeps the drain while the server is sick, sends
    nothing again, and restores it once it is healthy."""
    h = make(min_drain="2s")
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.restart_daemon()
    await h.tick(5)
    assert h.driver.drained() == {"s1"}
    assert h.driver.sent() == [("s1", "drain")]
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.drained() == set())
    drains = [a for a in h.actions("set_state") if a["value"] == "drain"]
    assert len(drains) == 1


async def test_a_drain_remembered_as_starting_tomorrow_lasts_its_hold(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drain time a day ahead in engine.json (a wall clock that was wrong, a hand edit) is
    taken as the restart's time and reported: the server, healthy, is back after its hold
    (1 s) and rise, not a day later."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    blob = h.store.load_blob("engine")
    assert blob is not None
    tomorrow = h.wall() + 86400
    blob["servers"]["api/s1"]["drained_at"] = tomorrow
    h.store.save_blob("engine", blob)
    h.restart_daemon()
    (clamped,) = events(logs, "engine_state_entry_clamped")
    assert clamped["server"] == "api/s1" and clamped["field"] == "drained_at"
    assert (clamped["stored"], clamped["used"]) == (tomorrow, h.wall())
    h.probes.set("s1", cpu=COOL)
    rounds = await h.tick_until(lambda: h.driver.drained() == set())
    assert 5 <= rounds <= 8  # the 1 s hold (5 rounds), then within a round or two


async def test_crash_between_recording_and_sending_a_drain(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drain recorded but never sent (the daemon died waiting on the LB) is settled from the
    LB by the next daemon: no phantom owner, no override, no command."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(2)
    h.driver.hold("set_state")
    await h.crash_at_gate()
    assert h.store.load_owned()[sid("s1")].admin is AdminState.DRAIN  # written ahead
    assert h.driver.commands == []
    h.probes.set("s1", cpu=COOL)
    h.restart_daemon()
    await h.tick(5)
    (recovered,) = events(logs, "change_recovered", "api/s1")
    assert recovered["landed"] is False
    assert h.driver.drained() == set() and h.driver.commands == []
    assert not events(logs, "operator_changed_state")
    assert h.store.load_owned() == {} and h.store.load_overrides() == {}


async def test_crash_after_a_drain_landed_keeps_it(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The twin: a drain that reached the LB before the daemon died is the next daemon's,
    kept without a second command and restored when the server is healthy."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(2)
    h.driver.hold("set_state", after=True)
    await h.crash_at_gate()
    assert h.driver.drained() == {"s1"}
    h.restart_daemon()
    await h.tick()
    (recovered,) = events(logs, "change_recovered", "api/s1")
    assert recovered["landed"] is True
    assert h.store.load_owned()[sid("s1")].admin is AdminState.DRAIN
    await h.tick(5)
    assert h.driver.sent("state") == [("s1", "drain")]
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.drained() == set())
    assert h.driver.sent("state") == [("s1", "drain"), ("s1", "ready")]


async def test_crash_after_a_restore_landed_is_not_repeated(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A restore that reached the LB before the daemon died is neither undone nor sent again."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    h.driver.hold("set_state", after=True)
    await h.crash_at_gate()
    assert h.driver.states()["s1"] is AdminState.READY
    h.restart_daemon()
    sent = len(h.driver.commands)
    await h.tick(5)
    (recovered,) = events(logs, "change_recovered", "api/s1")
    assert recovered["landed"] is True
    assert h.driver.states()["s1"] is AdminState.READY
    assert [c for c in h.driver.commands[sent:] if c.what == "state"] == []
    assert h.store.load_owned() == {}


async def test_crash_before_a_restore_was_sent_sends_it(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The twin: a restore recorded but never sent is sent by the next daemon."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    h.driver.hold("set_state")
    await h.crash_at_gate()
    assert h.driver.states()["s1"] is AdminState.DRAIN
    h.restart_daemon()
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    (recovered,) = events(logs, "change_recovered", "api/s1")
    assert recovered["landed"] is False
    assert h.driver.sent("state") == [("s1", "drain"), ("s1", "ready")]


async def test_crash_after_a_restore_landed_still_reaches_full_weight(
    make: Callable[..., Harness],
) -> None:
    """After that crash the restored server still ramps up to its full weight."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    h.driver.hold("set_state", after=True)
    await h.crash_at_gate()
    assert h.driver.weights()["s1"] < 100  # the ramp's first step landed with the restore
    h.restart_daemon()
    await h.tick(30)
    assert h.driver.weights()["s1"] == 100


async def test_crash_before_a_drain_of_a_ramping_server_was_sent_lets_it_ramp_on(
    make: Callable[..., Harness],
) -> None:
    """A server drained again while ramping up, the daemon dying before that drain left, still
    ramps on to its full weight under the next daemon once it is healthy."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    h.probes.set("s1", cpu=HOT)  # at the ramp's floor bad samples count toward a drain
    h.driver.hold("set_state")
    await h.crash_at_gate()
    assert (h.driver.states()["s1"], h.driver.weights()["s1"]) == (AdminState.READY, 10)
    h.probes.set("s1", cpu=COOL)
    h.restart_daemon()
    await h.tick(30)
    assert h.driver.weights()["s1"] == 100


async def test_operator_weight_change_during_slow_start_is_respected(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A weight set by hand while the server ramps up stops the ramp and is left as it is."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    h.driver.set_by_hand("s1", weight=50)
    sent = len(h.driver.commands)
    await h.tick(10)
    assert [e["server"] for e in events(logs, "operator_changed_weight")] == ["api/s1"]
    assert h.driver.weights()["s1"] == 50 and len(h.driver.commands) == sent
    assert h.store.load_owned() == {}


async def test_a_lost_weight_command_of_a_restore_is_not_taken_for_an_operator(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """The twin: the restore's own weight command, lost, is sent again rather than read as an
    operator's weight change, and the server still ramps up."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.probes.set("s1", cpu=COOL)
    h.driver.fail_endpoint(0, calls=1)  # the next command: the restore's weight (sent first)
    await h.tick_until(lambda: h.driver.states()["s1"] is AdminState.READY)
    assert events(logs, "lb_command_failed", "api/s1")
    await h.tick()
    assert not events(logs, "operator_changed_weight")
    assert h.driver.weights()["s1"] < 100


async def test_lb_unavailable_then_back(make: Callable[..., Harness], logs: Logs) -> None:
    """The LB gone for a while is logged once, rounds go on, and the drain is back once it
    returns (restarted, its state lost)."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    h.driver.unavailable("connection refused")
    h.driver.restart()
    await h.tick(5)
    assert len(events(logs, "lb_unavailable")) == 1
    assert not events(logs, "lb_available")
    h.driver.unavailable(None)
    await h.tick()
    assert events(logs, "lb_available")
    assert h.driver.drained() == {"s1"}


async def test_full_disk_keeps_the_daemon_serving(
    make: Callable[..., Harness], logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With state_dir unwritable the drain still reaches the LB and the failure is logged;
    once the disk has room the ownership record is written after all."""
    h = make()

    def full(*args: object, **kwargs: object) -> None:
        raise StateError(f"{h.store.dir}: No space left on device")

    for method in ("save_owned", "save_blobs", "append_actions"):
        monkeypatch.setattr(h.store, method, full)
    h.probes.set("s1", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1"}
    assert events(logs, "state_write_failed")
    assert h.store.load_owned() == {}
    monkeypatch.undo()
    await h.tick()
    assert list(h.store.load_owned()) == [sid("s1")]


async def test_state_dir_opened_to_others_while_running_keeps_the_last_good_overrides(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A state_dir made writable by every user while the daemon runs is refused from the next
    round on (logged once): the overrides read last stay in force, whatever was put there
    meanwhile. Tightened, it is read again."""
    h = make()
    h.override("s2", OverrideKind.DRAIN)
    await h.tick()
    assert h.driver.drained() == {"s2"}
    state = Path(h.config.daemon.state_dir)
    os.chmod(state, 0o777)
    planted = [
        {"server": f"api/{n}", "kind": "maint", "reason": "x", "who": "x", "created_at": 1.0}
        for n in ALL
    ]
    (state / "overrides.json").write_text(json.dumps({"version": 1, "overrides": planted}))
    await h.tick(5)
    assert h.driver.drained() == {"s2"}
    assert AdminState.MAINT not in h.driver.states().values()
    (refused,) = events(logs, "state_unreadable")
    assert str(state) in refused["error"] and "writable by every user" in refused["error"]
    os.chmod(state, 0o750)
    os.unlink(state / "overrides.json")  # what the operator found planted
    h.override("s2", OverrideKind.DRAIN)
    h.override("s3", OverrideKind.MAINT)
    await h.tick()
    assert h.driver.drained() == {"s2"}
    assert h.driver.states()["s3"] is AdminState.MAINT


# --- overrides ------------------------------------------------------------------------------


async def test_drain_override_is_applied_whatever_the_caps(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """Three drain overrides in a pool that allows two out: all three go out, with a warning."""
    h = make()
    for name in ("s1", "s2", "s3"):
        h.override(name, OverrideKind.DRAIN)
    await h.tick()
    assert h.driver.drained() == {"s1", "s2", "s3"}
    (warning,) = events(logs, "override_over_cap")
    assert warning["evidence"]["out"] == 3 and warning["evidence"]["max_out"] == 2
    assert warning["pool"] == "api"
    assert {a["who"] for a in h.actions("set_state")} == {"oncall"}
    await h.tick(5)
    assert len(events(logs, "override_over_cap")) == 1  # not again while nothing changes
    assert not events(logs, "override_within_cap")
    h.override("s4", OverrideKind.DRAIN)  # one more out: the warning says so
    await h.tick()
    assert [e["evidence"]["out"] for e in events(logs, "override_over_cap")] == [3, 4]
    for name in ("s2", "s3", "s4"):
        h.store.remove_override(sid(name))
    await h.tick()
    assert [e["pool"] for e in events(logs, "override_within_cap")] == ["api"]


async def test_maint_override_puts_the_server_in_maint(make: Callable[..., Harness]) -> None:
    """A maint override takes a healthy server to MAINT and keeps it there."""
    h = make()
    h.override("s2", OverrideKind.MAINT)
    await h.tick(10)
    assert h.driver.states()["s2"] is AdminState.MAINT
    assert h.driver.sent() == [("s2", "maint")]


async def test_override_with_expiry_is_restored_by_rise(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """A drain override for 2 s keeps a healthy server out until it expires; the daemon then
    restores it through the rise rule."""
    h = make()
    h.override("s2", OverrideKind.DRAIN, expires_in=2.0)
    await h.tick(9)  # 1.8 s
    assert h.driver.drained() == {"s2"}
    await h.tick_until(lambda: h.driver.drained() == set())
    assert events(logs, "override_expired", "api/s2")
    assert any(a["action"] == "override_expired" for a in h.actions())
    (restored,) = events(logs, "server_restored", "api/s2")
    assert restored["rule"] == "rise"


async def test_an_override_dated_in_the_future_ends_at_its_expiry(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """An override's created_at is only shown (as "since") and decides nothing: one dated a
    day ahead is applied at once and ends at its expires_at, as written; an expiry far ahead
    is an override without end, kept like one."""
    h = make()
    wall = h.wall()
    for name, kind, until in (("s2", OverrideKind.DRAIN, 2.0), ("s3", OverrideKind.MAINT, 1e12)):
        h.store.put_override(
            Override(sid(name), kind, "test", "oncall", wall + 86400, wall + until)
        )
    await h.tick(9)  # 1.8 s
    assert h.driver.drained() == {"s2"}
    assert h.driver.states()["s3"] is AdminState.MAINT
    await h.tick_until(lambda: h.driver.drained() == set())
    assert events(logs, "override_expired", "api/s2")
    assert h.wall() - wall < 5.0
    assert h.driver.states()["s3"] is AdminState.MAINT
    assert list(h.store.load_overrides()) == [sid("s3")]
    assert not events(logs, "state_unreadable")


async def test_ready_override_suppresses_drains(make: Callable[..., Harness], logs: Logs) -> None:
    """Of two overloaded servers, the one with a keep-in override stays in; the other goes."""
    h = make()
    h.override("s1", OverrideKind.READY)
    h.probes.set("s1", "s2", cpu=HOT)
    await h.tick(10)
    assert h.driver.drained() == {"s2"}
    assert [e["rule"] for e in events(logs, "drain_blocked", "api/s1")] == ["override"]


async def test_drain_made_while_the_daemon_was_down_is_honoured_on_start(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain made by the on-call command with no daemon running is kept by the daemon that
    starts next, healthy as the server is, and the on-call restore puts it back for good."""
    h = make()
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    done = await oncall.drain(h.config, sid("s4"), "kernel update", None, False, False)
    assert done.code == 0 and "daemon not running" in done.lines[1]
    h.restart_daemon()
    await h.tick(10)
    assert h.driver.drained() == {"s4"}
    assert h.driver.sent() == [("s4", "drain")]  # the command's own; the daemon sent nothing
    done = await oncall.restore(h.config, sid("s4"), None)
    assert done.code == 0 and h.driver.drained() == set()
    h.restart_daemon()
    await h.tick(10)
    assert h.driver.drained() == set()
    assert h.driver.sent() == [("s4", "drain"), ("s4", "ready")]


def _start_as_daemon(h: Harness) -> str:
    h.restart_daemon()
    h.store.append_action(event="started")
    r = h.reconciler
    return f"overrides {sorted(map(str, r.overrides))}, owned {sorted(map(str, r.writer.owned))}"


@needs_root
async def test_a_root_drain_while_the_daemon_is_down_leaves_state_the_daemon_can_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """root's `lbhealthd drain` with the daemon down, in the state_dir of the daemon's user,
    leaves every file owned by that user: the daemon, started as it, has the drain."""
    with shared_dir() as shared:
        state = shared / "state"
        state.mkdir(mode=0o750)
        os.chown(state, NOBODY, NOBODY)
        h = Harness(shared)
        monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
        done = await oncall.drain(h.config, sid("s4"), "kernel update", None, False, False)
        assert done.code == 0 and "daemon not running" in done.lines[1]
        assert {p.stat().st_uid for p in state.iterdir()} == {NOBODY}
        got = in_child(_start_as_daemon, h, uid=NOBODY)
        assert got == "ok: overrides ['api/s4'], owned ['api/s4']"
        await h.reconciler.close()


# --- config, agents, starvation -------------------------------------------------------------


async def test_reload_to_new_thresholds_takes_effect_next_round(
    make: Callable[..., Harness],
) -> None:
    """A load in the band under the old marks is overloaded under the reloaded ones: counted
    from the first round after the reload, drained in the fall-th."""
    h = make()
    h.probes.set("s1", cpu=0.8)
    await h.tick(10)
    assert h.driver.drained() == set()
    h.reconciler.reload(h.make_config(overload={"cpu": {"high": 0.75, "low": 0.5}}))
    await h.tick(2)
    assert h.driver.drained() == set()
    await h.tick()
    assert h.driver.drained() == {"s1"}


async def test_agent_that_undoes_a_drain_is_re_applied(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """An agent-check answering ready undoes a drain: the daemon warns and drains it again,
    whereas the same change made by an operator on a server without agent is respected."""
    h = make(memory_pool("api", 5, agents=["s1"]))
    h.probes.set("s1", "s2", cpu=HOT)
    await h.tick(3)
    assert h.driver.drained() == {"s1", "s2"}
    assert [e["server"] for e in events(logs, "agent_may_undo")] == ["api/s1"]
    h.driver.agent_says("s1", AdminState.READY)
    h.driver.set_by_hand("s2", admin=AdminState.READY)
    await h.tick()
    assert h.driver.drained() == {"s1"}
    assert [e["server"] for e in events(logs, "agent_undid_state")] == ["api/s1"]
    assert [e["server"] for e in events(logs, "operator_changed_state")] == ["api/s2"]
    assert list(h.store.load_overrides()) == [sid("s2")]
    assert h.driver.sent("state")[2:] == [("s1", "drain")]


async def test_starvation_freezes_decisions(make: Callable[..., Harness], logs: Logs) -> None:
    """Rounds of a starved event loop drain nobody however bad the samples; once the loop is
    fine again the same samples drain."""
    h = make()
    h.probes.set("s1", cpu=HOT)
    await h.tick(10, starved=1.0)
    assert h.driver.drained() == set() and h.driver.commands == []
    assert len(events(logs, "daemon_starved")) == 1
    assert not events(logs, "server_drained")
    await h.tick(3)
    assert events(logs, "daemon_recovered")
    assert h.driver.drained() == {"s1"}


# --- fast confirmation -----------------------------------------------------------------------


async def test_a_sample_toward_a_transition_asks_for_a_round_now(
    make: Callable[..., Harness],
) -> None:
    """Bad while in service and healthy while drained are worth a round now; the reverse
    are not."""
    from lbhealthd.testing import ok

    h = make()
    woken: list[bool] = []
    h.reconciler.on_evidence = lambda: woken.append(True)
    await h.tick()
    hot, cool = ok(sid("s1"), h.mono(), cpu=HOT), ok(sid("s1"), h.mono(), cpu=COOL)
    assert h.reconciler.sample_arrived(sid("s1"), cool) is False
    assert woken == []
    assert h.reconciler.sample_arrived(sid("s1"), hot) is True
    assert woken == [True]
    h.probes.set("s1", cpu=HOT)
    await h.tick()  # the engine counts an overloaded sample: a streak is under way
    assert h.reconciler.sample_arrived(sid("s1"), cool) is False  # not confirmed fast ...
    assert woken == [True, True]  # ... but decided at once: it ends the streak
    await h.tick(2)
    assert h.driver.drained() == {"s1"}
    assert h.reconciler.sample_arrived(sid("s1"), cool) is True
    assert h.reconciler.sample_arrived(sid("s1"), hot) is False
    assert h.reconciler.sample_arrived(ServerId("other", "s1"), hot) is False  # no such pool


async def test_probe_targets_are_rebuilt_only_when_they_change(
    make: Callable[..., Harness],
) -> None:
    """The scheduler hears of the targets once while nothing changes, and again, with the new
    interval, after a reload that changes the probe."""
    h = make()
    await h.tick(5)
    assert h.probes.syncs == 1
    assert {t.interval for t in h.probes.targets.values()} == {0.2}  # type: ignore[attr-defined]
    probe = {"interval": "400ms", "timeout": "100ms", "load_fields": {"cpu": "cpu"}}
    h.reconciler.reload(h.make_config(probe=probe))
    await h.tick(2)
    assert h.probes.syncs == 2
    assert {t.interval for t in h.probes.targets.values()} == {0.4}  # type: ignore[attr-defined]


async def test_without_fast_confirmation_samples_wait_for_the_round(
    make: Callable[..., Harness],
) -> None:
    """fast_interval equal to interval: no sample asks for a round (the control of the test
    above, where the same sample does)."""
    from lbhealthd.testing import ok

    probe = {"interval": "200ms", "timeout": "150ms", "fast_interval": "200ms"}
    h = make(probe={**probe, "load_fields": {"cpu": "cpu"}})
    woken: list[bool] = []
    h.reconciler.on_evidence = lambda: woken.append(True)
    await h.tick()
    assert h.reconciler.sample_arrived(sid("s1"), ok(sid("s1"), h.mono(), cpu=HOT)) is False
    assert woken == []


async def test_servers_with_nothing_new_are_still_seen_to_change(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """With no new sample (the scheduler's newest is the same object round after round) a
    round tells the engine what it told it before, and still sees what did change: an
    operator's hand on the LB, an override, a new sample."""
    h = make()  # at most 2 of 5 out
    h.probes.keep("s1", "s2", "s3", "s4", "s5")
    await h.tick(3)
    assert h.driver.drained() == set() and h.driver.sent() == []

    h.driver.set_by_hand("s2", admin=AdminState.MAINT)  # a new member, the same sample
    h.override("s3", OverrideKind.DRAIN)  # a new override, the same member and sample
    await h.tick()
    assert h.driver.drained() == {"s3"}

    h.probes.overload("s4")
    await h.tick(3)
    assert h.driver.drained() == {"s3"}  # its kept sample is healthy: nothing new counted
    assert not events(logs, "drain_blocked", "api/s4")
    h.probes.probe_again("s4")
    await h.tick(3)
    (blocked, *_) = events(logs, "drain_blocked", "api/s4")  # s2 (by hand) and s3 are out
    assert blocked["evidence"]["out"] == 2, blocked
    assert h.driver.drained() == {"s3"}

    h.driver.set_by_hand("s2", admin=AdminState.READY)  # the same sample, s2 back in
    await h.tick()
    assert h.driver.drained() == {"s3", "s4"}


LB_MARKS = {
    "cpu": {"high": 0.9, "low": 0.6},
    "latency_ms": {"high": 1000, "low": 500},
    "lb_queue": {"high": 10, "low": 1},
}


@pytest.mark.parametrize("marked", [True, False])
async def test_a_queue_at_the_lb_drains_a_server_between_probes(
    make: Callable[..., Harness], logs: Logs, marked: bool
) -> None:
    """With no new probe sample, a round's read whose queue is over its high mark counts as
    an overloaded sample of its own: ``fall`` such reads drain the server. A pool whose marks
    name no LB signal takes no evidence from the counters."""
    h = make(overload=LB_MARKS) if marked else make()
    h.probes.keep("s1", "s2", "s3", "s4", "s5")  # healthy, and not probed again
    await h.tick()
    h.driver.set_counters("s2", queue=25)
    await h.tick(2)
    assert h.driver.drained() == set()
    await h.tick()
    if not marked:
        await h.tick(10)
        assert h.driver.drained() == set()
        return
    assert h.driver.drained() == {"s2"}
    (drained,) = events(logs, "server_drained")
    assert "lb_queue 25 >= 10" in drained["reason"], drained
    assert drained["evidence"]["signals"] == {"lb_queue": 25.0, "lb_sessions": 0.0, "lb_rate": 0.0}


async def test_a_read_that_came_with_a_new_probe_sample_counts_once(
    make: Callable[..., Harness],
) -> None:
    """When each round brings a new probe sample, the read's counters ride in it: a queue
    over its mark counts one bad sample per round, not two."""
    h = make(overload=LB_MARKS)
    await h.tick()
    h.driver.set_counters("s2", queue=25)
    await h.tick(2)
    assert h.reconciler.state.servers[sid("s2")].bad == 2
    assert h.driver.drained() == set()
    await h.tick()
    assert h.driver.drained() == {"s2"}


async def test_a_quiet_lb_does_not_clear_a_streak_the_probes_started(
    make: Callable[..., Harness],
) -> None:
    """Counters under their marks are no evidence that a server is well: reads between two
    overloaded probe samples leave the streak as it is, and the third sample drains it."""
    h = make(overload=LB_MARKS)
    h.probes.set("s3", cpu=HOT)
    for _ in range(3):
        h.probes.keep("s3")  # one new sample, then reads of quiet counters only
        await h.tick(3)
        h.probes.probe_again("s3")
    await h.tick()
    assert h.driver.drained() == {"s3"}


async def test_counters_not_read_again_are_not_counted_again(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reads the counters at their own cadence: rounds in between get the last
    read again (the same generation), which counts once, however many rounds see it."""
    h = make(overload=LB_MARKS)
    h.probes.keep("s1", "s2", "s3", "s4", "s5")
    await h.tick()
    h.driver.set_counters("s2", queue=25)
    snapshot = h.driver.snapshot

    async def same_read(pool: str) -> PoolSnapshot:
        return dataclasses.replace(await snapshot(pool), counters=7)

    monkeypatch.setattr(h.driver, "snapshot", same_read)
    await h.tick(10)
    assert h.reconciler.state.servers[sid("s2")].bad == 1  # the one read, counted once
    assert h.driver.drained() == set()
    monkeypatch.setattr(h.driver, "snapshot", snapshot)  # new reads again
    await h.tick(2)
    assert h.driver.drained() == {"s2"}
