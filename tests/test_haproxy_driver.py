"""The HAProxy driver against a real HAProxy on loopback (and parse_socket on its own)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from lbhealthd.drivers import Driver
from lbhealthd.drivers.haproxy.driver import Endpoint, HAProxyDriver, parse_socket
from lbhealthd.drivers.haproxy.process import ServerSpec
from lbhealthd.errors import InvalidName, Rejected, Unavailable
from lbhealthd.model import AdminState, Member, OpState, PoolSnapshot, ServerId
from tests.fixtures_haproxy import (
    ApiServers,
    HAProxyFactory,
    HAProxyHandle,
    api_backend,
    free_port,
)

S1 = ServerId("api", "s1")
S2 = ServerId("api", "s2")
S3 = ServerId("api", "s3")


async def wait_until(
    cond: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``cond`` until it is true; fail the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def by_name(snap: PoolSnapshot) -> dict[str, Member]:
    return {m.id.server: m for m in snap.members}


async def raw(sock: str, cmd: str) -> str:
    """Ask HAProxy directly, bypassing the code under test's parsing."""
    driver = HAProxyDriver([sock], 2.0)
    return await driver.command(parse_socket(sock), cmd)


async def admin_bits(sock: str, server: str) -> int:
    """``srv_admin_state`` of ``api/server`` read from ``show servers state``."""
    lines = (await raw(sock, "show servers state api")).splitlines()
    header = lines[1][2:].split()
    for line in lines[2:]:
        row = dict(zip(header, line.split(), strict=False))
        if row.get("srv_name") == server:
            return int(row["srv_admin_state"])
    raise AssertionError(f"{server} not in show servers state")


@pytest.fixture
async def driver(haproxy: HAProxyHandle) -> AsyncIterator[HAProxyDriver]:
    d = HAProxyDriver([haproxy.socket], 2.0)
    yield d
    await d.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/haproxy/admin.sock", Endpoint("unix", path="/run/haproxy/admin.sock")),
        ("tcp:127.0.0.1:9999", Endpoint("tcp", host="127.0.0.1", port=9999)),
        ("tcp:[::1]:9999", Endpoint("tcp", host="::1", port=9999)),
    ],
    ids=["unix", "tcp", "tcp-ipv6"],
)
def test_parse_socket_accepts(text: str, expected: Endpoint) -> None:
    """Valid socket strings parse and print back the same."""
    assert parse_socket(text) == expected
    assert str(parse_socket(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/run/admin.sock",
        "unix:",
        "unix:relative.sock",
        "udp:1.2.3.4:5",
        "tcp:host",
        "tcp:host:0",
        "tcp:host:70000",
        "tcp::80",
        "tcp:host:http",
        "unix:/a\nb",
    ],
)
def test_parse_socket_refuses(text: str) -> None:
    """Malformed socket strings raise ValueError naming the string."""
    with pytest.raises(ValueError, match="invalid socket"):
        parse_socket(text)


@pytest.mark.integration
async def test_snapshot_lists_servers(
    haproxy: HAProxyHandle, driver: HAProxyDriver, api_servers: ApiServers
) -> None:
    """A snapshot lists s1..s5 with address, port, weight, READY/UP and the process epoch."""
    as_protocol: Driver = driver
    snap = await as_protocol.snapshot("api")
    assert [m.id.server for m in snap.members] == ["s1", "s2", "s3", "s4", "s5"]
    for member, port in zip(snap.members, api_servers.ports, strict=True):
        assert (member.address, member.port) == ("127.0.0.1", port)
        assert (member.weight, member.initial_weight) == (100, 100)
        assert (member.admin, member.op) == (AdminState.READY, OpState.UP)
        assert member.consistent and not member.has_agent
    assert str(haproxy.proc.pid) in snap.epoch


@pytest.mark.integration
async def test_drain_keeps_weight_and_ready_restores(
    haproxy: HAProxyHandle, driver: HAProxyDriver
) -> None:
    """Drain sets admin bit 0x08 with the weight untouched; ready clears it."""
    await driver.set_state(S1, AdminState.DRAIN)
    s1 = by_name(await driver.snapshot("api"))["s1"]
    assert (s1.admin, s1.weight) == (AdminState.DRAIN, 100)
    assert await admin_bits(haproxy.socket, "s1") == 0x08
    assert by_name(await driver.snapshot("api"))["s2"].admin is AdminState.READY

    await driver.set_state(S1, AdminState.READY)
    assert by_name(await driver.snapshot("api"))["s1"].admin is AdminState.READY
    assert await admin_bits(haproxy.socket, "s1") == 0


@pytest.mark.integration
async def test_maint_is_read_as_maint(haproxy: HAProxyHandle, driver: HAProxyDriver) -> None:
    """Maint sets admin bit 0x01 and takes the server operationally down."""
    await driver.set_state(S2, AdminState.MAINT)
    s2 = by_name(await driver.snapshot("api"))["s2"]
    assert (s2.admin, s2.op) == (AdminState.MAINT, OpState.DOWN)
    assert await admin_bits(haproxy.socket, "s2") == 0x01


@pytest.mark.integration
async def test_set_weight(haproxy: HAProxyHandle, driver: HAProxyDriver) -> None:
    """set_weight changes the current weight and keeps the initial one."""
    await driver.set_weight(S3, 10)
    s3 = by_name(await driver.snapshot("api"))["s3"]
    assert (s3.weight, s3.initial_weight) == (10, 100)
    assert (await raw(haproxy.socket, "get weight api/s3")).strip() == "10 (initial 100)"


@pytest.mark.integration
async def test_unknown_server_and_backend_are_rejected_without_retry(
    driver: HAProxyDriver,
) -> None:
    """HAProxy's refusals are Rejected at once, never retried."""
    with capture_logs() as logs:
        with pytest.raises(Rejected, match="No such server"):
            await driver.set_state(ServerId("api", "nosuch"), AdminState.DRAIN)
        with pytest.raises(Rejected, match="No such backend"):
            await driver.set_weight(ServerId("nosuch", "s1"), 5)
        with pytest.raises(Rejected, match="Can't find backend"):
            await driver.snapshot("nosuch")
    assert [e for e in logs if e["event"] == "driver_retry"] == []


@pytest.mark.integration
async def test_missing_socket_is_unavailable_after_bounded_retries(tmp_path: Path) -> None:
    """A missing socket path gives Unavailable (ENOENT) after 3 attempts, within the timeout."""
    driver = HAProxyDriver([f"unix:{tmp_path}/missing.sock"], 1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with capture_logs() as logs, pytest.raises(Unavailable, match="ENOENT"):
        await driver.set_state(S1, AdminState.DRAIN)
    assert loop.time() - start < 1.2
    retries = [e for e in logs if e["event"] == "driver_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(str(tmp_path) in e["endpoint"] for e in retries)


@pytest.mark.integration
async def test_refused_endpoints_are_unavailable(tmp_path: Path) -> None:
    """A regular file at the socket path and a closed TCP port are both 'refused'."""
    plain = tmp_path / "plain.sock"
    plain.write_text("")
    for sock in (f"unix:{plain}", f"tcp:127.0.0.1:{free_port()}"):
        driver = HAProxyDriver([sock], 0.5)
        with pytest.raises(Unavailable, match="refused"):
            await driver.snapshot("api")


@pytest.mark.integration
async def test_silent_socket_times_out_within_the_timeout(tmp_path: Path) -> None:
    """A socket that accepts and never answers gives Unavailable after about ``timeout``."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(swallow, path=str(path))
    try:
        driver = HAProxyDriver([f"unix:{path}"], 0.5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Unavailable, match="timed out"):
            await driver.set_state(S1, AdminState.DRAIN)
        assert 0.4 < loop.time() - start < 1.0
    finally:
        server.close()
        await server.wait_closed()


BAD_NAMES = [
    "s1;set server api/s2 state maint",
    "s1\nshow info",
    "s1 state maint",
    "#1",
    "",
    "s" * 65,
    "sé",
    "s1 <<",
]


@pytest.mark.integration
@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
async def test_injection_is_refused_before_sending(
    haproxy: HAProxyHandle, tmp_path: Path, name: str
) -> None:
    """Unsafe names raise InvalidName before any connection; HAProxy is unchanged."""
    connections = 0

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    spy = tmp_path / "spy.sock"
    server = await asyncio.start_unix_server(record, path=str(spy))
    try:
        driver = HAProxyDriver([haproxy.socket, f"unix:{spy}"], 1.0)
        with pytest.raises(InvalidName):
            ServerId("api", name)
        forged = tuple.__new__(ServerId, ("api", name))  # skip the constructor's own check
        with pytest.raises(InvalidName):
            await driver.set_state(forged, AdminState.MAINT)
        with pytest.raises(InvalidName):
            await driver.set_weight(forged, 0)
        with pytest.raises(InvalidName):
            await driver.snapshot(name)
        assert connections == 0
    finally:
        server.close()
        await server.wait_closed()
    members = by_name(await HAProxyDriver([haproxy.socket], 2.0).snapshot("api"))
    assert all(m.admin is AdminState.READY and m.weight == 100 for m in members.values())


@pytest.mark.integration
@pytest.mark.parametrize("weight", [257, -1, True, 1.5, "10"], ids=str)
async def test_bad_weights_are_refused_locally(driver: HAProxyDriver, weight: object) -> None:
    """Weights outside 0..256 or not int are refused before sending; nothing changes."""
    with pytest.raises(ValueError, match="invalid weight"):
        await driver.set_weight(S1, weight)  # type: ignore[arg-type]
    assert by_name(await driver.snapshot("api"))["s1"].weight == 100


@pytest.mark.integration
async def test_states_only_from_the_enum(driver: HAProxyDriver) -> None:
    """A plain string is not a state, even a valid-looking one."""
    with pytest.raises(ValueError, match="invalid state"):
        await driver.set_state(S1, "drain")  # type: ignore[arg-type]


@pytest.mark.integration
async def test_tcp_socket_works_like_unix(haproxy: HAProxyHandle) -> None:
    """The TCP admin socket reads and writes the same process as the unix one."""
    assert haproxy.tcp_socket is not None
    tcp = HAProxyDriver([haproxy.tcp_socket], 2.0)
    await tcp.set_state(S2, AdminState.DRAIN)
    assert await admin_bits(haproxy.socket, "s2") == 0x08
    snap = await tcp.snapshot("api")
    assert by_name(snap)["s2"].admin is AdminState.DRAIN
    assert snap.epoch.startswith(f"{haproxy.proc.pid}@")


@pytest.fixture
async def pair(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> tuple[HAProxyHandle, HAProxyHandle]:
    backends = {"api": api_backend(api_servers)}
    return await haproxy_factory(backends), await haproxy_factory(backends)


@pytest.mark.integration
async def test_ha_pair_writes_reach_both(pair: tuple[HAProxyHandle, HAProxyHandle]) -> None:
    """set_state and set_weight reach every endpoint; the snapshot is consistent."""
    a, b = pair
    driver = HAProxyDriver([a.socket, b.socket], 2.0)
    await driver.set_state(S1, AdminState.DRAIN)
    await driver.set_weight(S2, 7)
    for h in pair:
        members = by_name(await HAProxyDriver([h.socket], 2.0).snapshot("api"))
        assert (members["s1"].admin, members["s2"].weight) == (AdminState.DRAIN, 7)
    snap = await driver.snapshot("api")
    assert all(m.consistent for m in snap.members)
    first, second = snap.epoch.split(",")
    assert first.startswith(f"{a.proc.pid}@") and second.startswith(f"{b.proc.pid}@")


@pytest.mark.integration
async def test_ha_pair_disagreement_is_inconsistent(
    pair: tuple[HAProxyHandle, HAProxyHandle],
) -> None:
    """A change made on one process only marks that server inconsistent."""
    a, b = pair
    await HAProxyDriver([b.socket], 2.0).set_weight(S3, 5)
    await HAProxyDriver([b.socket], 2.0).set_state(S1, AdminState.MAINT)
    members = by_name(await HAProxyDriver([a.socket, b.socket], 2.0).snapshot("api"))
    assert not members["s1"].consistent and not members["s3"].consistent
    assert members["s3"].weight == 100  # taken from the first endpoint
    assert all(members[s].consistent for s in ("s2", "s4", "s5"))


@pytest.mark.integration
async def test_ha_pair_with_one_process_down(
    pair: tuple[HAProxyHandle, HAProxyHandle],
) -> None:
    """With one process stopped, reads still work (inconsistent) and writes raise after
    applying to the live process."""
    a, b = pair
    pid = b.proc.pid
    assert pid is not None
    await b.proc.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    driver = HAProxyDriver([a.socket, b.socket], 1.0)
    snap = await driver.snapshot("api")
    assert len(snap.members) == 5 and not any(m.consistent for m in snap.members)
    assert list(driver.last_errors) == [b.socket]
    assert isinstance(driver.last_errors[b.socket], Unavailable)
    with pytest.raises(Unavailable, match="1 of 2 endpoints failed") as err:
        await driver.set_state(S1, AdminState.DRAIN)
    assert err.value.endpoint == b.socket
    assert await admin_bits(a.socket, "s1") == 0x08


@pytest.mark.integration
async def test_restart_changes_epoch_and_loses_drain(
    haproxy: HAProxyHandle, driver: HAProxyDriver
) -> None:
    """A restarted HAProxy has a new epoch and has forgotten runtime changes."""
    await driver.set_state(S1, AdminState.DRAIN)
    before = await driver.snapshot("api")
    old_pid = haproxy.proc.pid
    await haproxy.proc.restart()
    assert haproxy.proc.pid not in (None, old_pid)
    after = await driver.snapshot("api")
    assert after.epoch != before.epoch
    assert by_name(after)["s1"].admin is AdminState.READY


@pytest.mark.integration
async def test_traffic_counters_grow(
    haproxy: HAProxyHandle, driver: HAProxyDriver, api_servers: ApiServers
) -> None:
    """Requests through the frontend show up in sessions_total."""
    before = sum(m.sessions_total for m in (await driver.snapshot("api")).members)
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(haproxy.url) as resp:
                assert resp.status == 200
                await resp.read()
    assert sum(api_servers.hits) == 50

    async def counted() -> bool:
        snap = await driver.snapshot("api")
        return sum(m.sessions_total for m in snap.members) - before >= 50

    await wait_until(counted, what="sessions_total to grow by 50")
    totals = [m.sessions_total for m in (await driver.snapshot("api")).members]
    assert all(t >= 5 for t in totals), totals  # roundrobin with equal weights spreads them


@pytest.mark.integration
async def test_agent_check_is_detected(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """A server with an agent-check reports has_agent; the others do not."""
    agent_connections = 0

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal agent_connections
        agent_connections += 1
        writer.write(b"ready\n")
        await writer.drain()
        writer.close()

    agent_server = await asyncio.start_server(agent, "127.0.0.1", 0)
    agent_port = agent_server.sockets[0].getsockname()[1]
    try:
        servers = api_backend(api_servers)
        servers[0] = ServerSpec(
            "s1",
            "127.0.0.1",
            api_servers.ports[0],
            100,
            f"agent-check agent-port {agent_port} agent-inter 1s",
        )
        h = await haproxy_factory({"api": servers})

        async def agent_asked() -> bool:
            return agent_connections >= 1

        await wait_until(agent_asked, within=5.0, what="HAProxy to query the agent")
        members = by_name(await HAProxyDriver([h.socket], 2.0).snapshot("api"))
        assert members["s1"].has_agent
        assert not any(members[s].has_agent for s in ("s2", "s3", "s4", "s5"))
    finally:
        agent_server.close()
        await agent_server.wait_closed()


@pytest.mark.integration
async def test_a_state_inherited_through_track_is_imposed_not_set(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """s1 tracks origin/o1. Drained, then o1 put in maint: HAProxy shows s1 with its own drain
    and an inherited maint (0x0A); the driver reads the drain as s1's admin state and the maint
    as imposed. A `disabled` server put back with `state ready` keeps the config's bit (0x04)
    but is in rotation, and reads so."""
    servers = api_backend(api_servers)
    servers[0] = replace(servers[0], extra="track origin/o1")
    servers[1] = replace(servers[1], extra="disabled")
    origin = [ServerSpec("o1", "127.0.0.1", api_servers.ports[0], 100, "check")]
    h = await haproxy_factory({"api": servers, "origin": origin})
    driver = HAProxyDriver([h.socket], 2.0)
    o1 = ServerId("origin", "o1")
    try:
        await driver.set_state(S1, AdminState.DRAIN)
        await driver.set_state(o1, AdminState.MAINT)
        assert await admin_bits(h.socket, "s1") == 0x0A
        s1 = by_name(await driver.snapshot("api"))["s1"]
        assert (s1.admin, s1.imposed, s1.in_rotation) == (AdminState.DRAIN, AdminState.MAINT, False)
        await driver.set_state(S1, AdminState.READY)  # an admin command cannot clear it
        s1 = by_name(await driver.snapshot("api"))["s1"]
        assert (s1.admin, s1.imposed, s1.in_rotation) == (AdminState.READY, AdminState.MAINT, False)
        await driver.set_state(o1, AdminState.READY)
        s1 = by_name(await driver.snapshot("api"))["s1"]
        assert (s1.admin, s1.imposed) == (AdminState.READY, None)

        s2 = by_name(await driver.snapshot("api"))["s2"]
        assert (s2.admin, s2.in_rotation) == (AdminState.MAINT, False)
        await driver.set_state(S2, AdminState.READY)
        assert await admin_bits(h.socket, "s2") == 0x04
        s2 = by_name(await driver.snapshot("api"))["s2"]
        assert (s2.admin, s2.imposed, s2.in_rotation) == (AdminState.READY, None, True)
    finally:
        await driver.close()


@pytest.mark.integration
async def test_an_unchanged_server_reads_as_the_same_member(
    haproxy: HAProxyHandle, driver: HAProxyDriver
) -> None:
    """Reads where nothing changed give the very same Member objects (what lets a round skip
    the servers with nothing new); a change gives that server, and only it, a new one."""
    first = by_name(await driver.snapshot("api"))
    again = by_name(await driver.snapshot("api"))
    assert all(again[name] is first[name] for name in first)

    await driver.set_weight(S3, 10)
    after = by_name(await driver.snapshot("api"))
    assert after["s3"] is not first["s3"] and after["s3"].weight == 10
    assert all(after[name] is first[name] for name in first if name != "s3")


@pytest.mark.integration
async def test_counters_are_read_at_their_own_cadence(
    haproxy: HAProxyHandle, api_servers: ApiServers
) -> None:
    """With ``stats_every`` the counters are read at most that often: a snapshot in between
    has the states of now and the counters (and their generation) of the last read; a driver
    reading them every time (the twin) sees the traffic at once."""
    slow = HAProxyDriver([haproxy.socket], 2.0, stats_every=60.0)
    every = HAProxyDriver([haproxy.socket], 2.0)
    try:
        first, first_every = await slow.snapshot("api"), await every.snapshot("api")
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(haproxy.url) as resp:
                    await resp.read()
        await slow.set_state(S2, AdminState.DRAIN)

        async def seen_by_every() -> bool:
            snap = await every.snapshot("api")
            return sum(m.sessions_total for m in snap.members) >= 20

        await wait_until(seen_by_every, what="the traffic in the counters read every time")
        again = await slow.snapshot("api")
        assert again.counters == first.counters == 1
        assert sum(m.sessions_total for m in again.members) == sum(
            m.sessions_total for m in first.members
        )
        assert by_name(again)["s2"].admin is AdminState.DRAIN  # the states are of now
        assert (await every.snapshot("api")).counters > first_every.counters

        await haproxy.proc.restart()  # a new process: the counters read are not its own
        restarted = await slow.snapshot("api")
        assert restarted.counters == 2
        assert sum(m.sessions_total for m in restarted.members) == 0
    finally:
        await slow.close()
        await every.close()
