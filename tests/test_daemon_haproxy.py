"""The daemon against a real HAProxy in front of real API servers whose load the test sets."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lbhealthd.daemon.loop import Daemon
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import ServerSpec
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from lbhealthd.oncall import commands as oncall
from lbhealthd.store import Store
from tests.daemon_harness import LBView, Stepped, make_config, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyFactory, HAProxyHandle, api_backend

pytestmark = pytest.mark.integration

# fall 3 × interval 0.2 s + 1 s, as the issue asks, plus one 0.1 s round.
DRAIN_DEADLINE = 3 * 0.2 + 1.0 + 0.1


async def test_overloaded_servers_are_drained_and_the_rest_untouched(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """Two overloaded servers are in DRAIN within fall × interval + 1 s; the others stay READY."""
    lb = LBView(haproxy.socket)
    async with running(make_config([haproxy.socket], tmp_path / "state")) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        api_servers.set(0, cpu=0.97)
        api_servers.set(1, cpu=0.95)
        started = time.monotonic()
        await wait_for(lambda: _eq(lb.drained(), {"s1", "s2"}), 5, "s1 and s2 drained")
        assert time.monotonic() - started <= DRAIN_DEADLINE
        states = await lb.states()
        assert [states[s] for s in ("s3", "s4", "s5")] == [AdminState.READY] * 3
    actions = Store(tmp_path / "state").read_actions()
    assert {(a["server"], a["value"]) for a in actions if a["action"] == "set_state"} == {
        ("api/s1", "drain"),
        ("api/s2", "drain"),
    }
    assert all(a["rule"] == "fall" for a in actions)


async def test_fast_confirmation_drains_within_one_interval_and_two_fast_ones(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """Probes every 1 s, fall 3, the default fast interval (0.25 s), rounds every 1 s: the
    drain is in HAProxy within interval + (fall − 1) × fast_interval of the onset (each with
    its ±10 % jitter), plus 0.5 s for probing, deciding and the command; without fast
    confirmation it takes fall × interval and up to a round more (3.05 s when tried)."""
    probe = {"interval": "1s", "timeout": "500ms", "load_fields": {"cpu": "cpu"}}
    config = make_config(
        [haproxy.socket], tmp_path / "state", probe=probe, daemon={"round_interval": "1s"}
    )
    assert config.pools[0].probe.confirm_interval == 0.25
    lb = LBView(haproxy.socket)
    async with running(config) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        api_servers.set(2, cpu=0.97)
        onset = time.monotonic()
        await wait_for(lambda: _eq(lb.drained(), {"s3"}), 6, "s3 drained")
        took = time.monotonic() - onset
    assert took <= 1.1 * (1.0 + 2 * 0.25) + 0.5, took


async def _eq(value: object, expected: object) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected


async def test_agent_that_undoes_a_drain_is_not_taken_for_an_operator(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """An agent replying `ready` undoes the drain; the daemon warns and re-applies it."""
    replies = 0

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal replies
        replies += 1
        writer.write(b"ready\n")
        await writer.drain()
        writer.close()

    agent_server = await asyncio.start_server(agent, "127.0.0.1", 0)
    port = agent_server.sockets[0].getsockname()[1]
    try:
        servers = api_backend(api_servers)
        servers[0] = replace(servers[0], extra=f"agent-check agent-port {port} agent-inter 1s")
        lb = await haproxy_factory({"api": servers})
        view = LBView(lb.socket)
        with capture_logs() as logs:
            async with running(make_config([lb.socket], tmp_path / "state")):
                api_servers.set(0, cpu=0.97)
                await wait_for(lambda: _eq(view.drained(), {"s1"}), 5, "s1 drained")
                seen = replies
                await wait_for(lambda: replies >= seen + 2, 6, "two agent replies")
                await wait_for(lambda: _eq(view.drained(), {"s1"}), 3, "s1 drained still")
        assert any(e["event"] == "agent_may_undo" for e in logs)
        assert any(e["event"] == "agent_undid_state" for e in logs)
        assert not any(e["event"] == "operator_changed_state" for e in logs)
        assert Store(tmp_path / "state").load_overrides() == {}
    finally:
        agent_server.close()
        await agent_server.wait_closed()


async def test_a_round_of_many_changes_shares_one_connection_and_few_writes(
    haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """40 servers taken out in one round (operators' overrides): their commands share the
    runtime API connection, state_dir is written a handful of times rather than per change,
    and every one of them is in DRAIN with its record in the action log."""
    servers = [ServerSpec(f"s{i}", "127.0.0.1", 20000 + i, 100) for i in range(60)]
    haproxy = await haproxy_factory({"api": servers})
    state = tmp_path / "state"
    store = Store.open(state)
    wall = time.time()
    for i in range(40):
        sid = ServerId("api", f"s{i}")
        store.put_override(Override(sid, OverrideKind.DRAIN, "batch test", "test", wall))
    daemon = Daemon(make_config([haproxy.socket], state, blind_threshold="100%"))
    driver = daemon.driver
    assert isinstance(driver, HAProxyDriver)
    try:
        await daemon.reconciler.tick()
        assert driver.connections <= 2  # the round's reads, then its 40 commands
        assert daemon.reconciler.journal.writes <= 6
    finally:
        await daemon.close()
    drained = await LBView(haproxy.socket).drained()
    assert drained == {f"s{i}" for i in range(40)}
    sets = [a for a in Store(state).read_actions() if a["action"] == "set_state"]
    assert sorted(a["server"] for a in sets) == sorted(f"api/s{i}" for i in range(40))


async def test_the_heap_at_start_is_kept_out_of_full_collections(
    haproxy: HAProxyHandle, tmp_path: Path
) -> None:
    """While the daemon runs, what existed when it started is frozen out of the garbage
    collector's full passes (they walked it all and held the loop for seconds in a large
    process); when it stops, the process gets it back."""
    ballast = [[i] for i in range(50_000)]  # a large heap of the embedding process
    assert gc.get_freeze_count() == 0
    async with running(make_config([haproxy.socket], tmp_path / "state")) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 1, 5, "a round")
        assert gc.get_freeze_count() >= len(ballast)
    assert gc.get_freeze_count() == 0
    del ballast


async def test_maintenance_inherited_through_track_is_not_an_operators_change(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """lbhealthd drains s1 and s2. s1 tracks origin/o1, which an operator puts in maint for a
    while: s1 inherits maint on top of lbhealthd's drain. Nobody changed s1: lbhealthd keeps
    holding it (no release, no keep-in override), and restores it once o1 is back and s1 is
    healthy. The same rounds, an operator puts s2 itself in maint: that is a hand change, and
    s2 is let go of."""
    servers = api_backend(api_servers)
    servers[0] = replace(servers[0], extra="track origin/o1")
    origin = [ServerSpec("o1", "127.0.0.1", api_servers.ports[0], 100, "check")]
    lb = await haproxy_factory({"api": servers, "origin": origin})
    view = LBView(lb.socket)
    h = Stepped(make_config([lb.socket], tmp_path / "state"), HAProxyDriver([lb.socket], 2.0))
    o1 = ServerId("origin", "o1")
    try:
        h.probes.set("s1", "s2", cpu=0.97)
        await h.tick(3)
        assert await view.drained() == {"s1", "s2"}
        with capture_logs() as logs:
            await view.driver.set_state(o1, AdminState.MAINT)
            await view.set_state("s2", AdminState.MAINT)
            await h.tick(3)
            changed = [e["server"] for e in logs if e["event"] == "operator_changed_state"]
            assert changed == ["api/s2"]
            assert list(h.store.load_owned()) == [ServerId("api", "s1")]
            assert list(h.store.load_overrides()) == []
            await view.driver.set_state(o1, AdminState.READY)
            h.probes.set("s1", "s2", cpu=0.1)
            for _ in range(30):
                await h.tick()
                if (await view.states())["s1"] is AdminState.READY:
                    break
            assert (await view.states())["s1"] is AdminState.READY
            restored = [e["server"] for e in logs if e["event"] == "server_restored"]
            assert restored == ["api/s1"]
            assert (await view.states())["s2"] is AdminState.MAINT  # the operator's, left alone
    finally:
        await h.close()
        await view.driver.close()


async def test_an_ha_pair_listing_different_servers_is_inconsistent_not_a_union(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """Two HAProxy processes of a pair: A lists s1-s5, B lists t1-t5; s1-s4 are overloaded.
    No drain and no command (each would have drawn `No such server` from B), one
    `pool_inconsistent` event. Once B lists s1-s5 too (added at runtime, t1-t5 deleted), the
    two worst are drained on both, as in a pool of five. `lbhealthd status` with the daemon
    down shows the pool inconsistent and exits 1 meanwhile."""
    a = await haproxy_factory({"api": api_backend(api_servers)})
    others = [
        ServerSpec(f"t{i}", "127.0.0.1", port, 100) for i, port in enumerate(api_servers.ports, 1)
    ]
    b = await haproxy_factory({"api": others})
    config = make_config([a.socket, b.socket], tmp_path / "state")
    h = Stepped(config, HAProxyDriver([a.socket, b.socket], 2.0))
    raw = HAProxyDriver([b.socket], 2.0)
    endpoint = raw.endpoints[0]
    try:
        for name, cpu in zip(("s1", "s2", "s3", "s4"), (0.91, 0.99, 0.92, 0.98), strict=True):
            h.probes.set(name, cpu=cpu)
        with capture_logs() as logs:
            await h.tick(10)
        assert [e["event"] for e in logs if e["event"] == "pool_inconsistent"] == [
            "pool_inconsistent"
        ]
        assert not [e for e in logs if e["event"] in ("lb_command", "lb_command_failed")]
        assert not [e for e in logs if "No such server" in str(e)]
        assert await LBView(a.socket).drained() == set()
        shown = await oncall.show_status(config)
        assert shown.document is not None
        (pool,) = shown.document["pools"]
        assert shown.code == 1 and pool["inconsistent"] and pool["size"] == 0
        assert "inconsistent" in [alert["rule"] for alert in pool["alerts"]]

        for i, port in enumerate(api_servers.ports, 1):
            added = await raw.command(endpoint, f"add server api/s{i} 127.0.0.1:{port} weight 100")
            assert "New server registered" in added
            assert (await raw.command(endpoint, f"set server api/s{i} state ready")).strip() == ""
            await raw.command(endpoint, f"set server api/t{i} state maint")
            assert "Server deleted" in await raw.command(endpoint, f"del server api/t{i}")
        with capture_logs() as logs:
            await h.tick()
        assert await LBView(a.socket).drained() == await LBView(b.socket).drained() == {"s2", "s4"}
        assert [e["event"] for e in logs if e["event"] == "pool_consistent"] == ["pool_consistent"]
        assert not [e for e in logs if e["event"] == "lb_command_failed"]
    finally:
        await h.close()
        await raw.close()


async def test_capacity_keeps_a_server_the_rest_cannot_carry_and_drains_it_once_they_can(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """capacity_signal cpu (marks 0.9/0.6), five servers of weight 100: s1 at 1.2 while the
    four others are at 0.85 is not drained (4.6 / 4 = 1.15 >= 0.9) and status says why; once
    the others are at 0.3 (2.4 / 4 = 0.6) it is drained."""
    lb = LBView(haproxy.socket)
    config = make_config([haproxy.socket], tmp_path / "state", capacity_signal="cpu")

    async def servers() -> dict[str, dict[str, Any]]:
        shown = await oncall.show_status(config)
        assert shown.document is not None
        (pool,) = shown.document["pools"]
        return {s["server"]: s for s in pool["servers"]}

    async def blocked_s1() -> dict[str, object] | None:
        return (await servers())["api/s1"]["blocked"]  # type: ignore[no-any-return]

    async def others_at(cpu: float) -> bool:
        seen = await servers()
        return all(
            (seen[f"api/s{i}"]["probe"] or {}).get("signals", {}).get("cpu") == cpu
            for i in range(2, 6)
        )

    async with running(config) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        for i in range(1, 5):
            api_servers.set(i, cpu=0.85)
        # s1 rises only once the daemon sees the others near their mark (else it may go out
        # on samples the others sent before).
        await wait_for(lambda: others_at(0.85), 5, "the others at 0.85")
        api_servers.set(0, cpu=1.2)
        blocked = await wait_for(blocked_s1, 5, "s1 blocked")
        assert blocked["rule"] == "capacity"
        assert "projected 1.15 >= high 0.9" in str(blocked["reason"])
        await asyncio.sleep(DRAIN_DEADLINE)
        assert await lb.drained() == set()
        shown = await oncall.show_status(config)
        assert any("blocked (capacity)" in line for line in shown.lines)

        for i in range(1, 5):
            api_servers.set(i, cpu=0.3)
        await wait_for(lambda: _eq(lb.drained(), {"s1"}), 5, "s1 drained")
    actions = Store(tmp_path / "state").read_actions()
    assert [(a["server"], a["value"]) for a in actions if a["action"] == "set_state"] == [
        ("api/s1", "drain")
    ]
