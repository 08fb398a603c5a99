"""The load agent: its agent-check replies, cgroup parsing, HTTP endpoint and a real HAProxy."""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil
import pytest
from structlog.testing import capture_logs

from lbhealthd import agent as agent_mod
from lbhealthd.agent import (
    Agent,
    Cgroup,
    Load,
    LoadReader,
    Thresholds,
    agent_reply,
    parse_cpu_max,
    parse_listen,
    read_cgroup,
    run_agent,
)
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import ServerSpec
from lbhealthd.model import AdminState, Member, ServerId
from tests.fixtures_haproxy import ApiServers, HAProxyFactory

DEFAULT = Thresholds()


class FixedLoad:
    """A load source the test sets by hand."""

    def __init__(self, cpu: float | None = None) -> None:
        self.load = Load(cpu=cpu, load_per_core=0.5, memory=0.25, cpus=2.0)

    def set_cpu(self, cpu: float | None) -> None:
        self.load = Load(cpu=cpu, load_per_core=0.5, memory=0.25, cpus=2.0)

    def read(self) -> Load:
        return self.load


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


async def agent_line(port: int, send: bytes = b"") -> bytes:
    """Connect like HAProxy does, optionally send agent-send text, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if send:
            writer.write(send)
            await writer.drain()
        async with asyncio.timeout(2.0):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


# ---- agent_reply ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "thresholds", "expected"),
    [
        (0.0, DEFAULT, "ready 100%\n"),
        (0.5, DEFAULT, "ready 100%\n"),
        (0.725, DEFAULT, "ready 55%\n"),
        (0.75, DEFAULT, "ready 50%\n"),
        (0.9499, DEFAULT, "ready 10%\n"),
        (0.95, DEFAULT, "ready 10%\n"),
        (1.0, DEFAULT, "ready 10%\n"),
        (7.5, DEFAULT, "ready 10%\n"),
        (None, DEFAULT, "ready 100%\n"),
        (math.nan, DEFAULT, "ready 100%\n"),
        (math.inf, DEFAULT, "ready 100%\n"),
        (0.6, Thresholds(full_below=0.2, drain_at=0.6, min_weight=25), "ready 25%\n"),
        (0.4, Thresholds(full_below=0.2, drain_at=0.6, min_weight=25), "ready 62%\n"),
        (0.99, Thresholds(full_below=0.0, drain_at=1.0, min_weight=1), "ready 2%\n"),
    ],
    ids=[
        "idle",
        "at-full-below",
        "midway-low",
        "half",
        "just-below-drain",
        "at-drain-at",
        "saturated",
        "beyond-one",
        "unknown-cpu-fails-open",
        "nan-fails-open",
        "inf-fails-open",
        "custom-at-drain",
        "custom-midway",
        "custom-floor-1",
    ],
)
def test_agent_reply(cpu: float | None, thresholds: Thresholds, expected: str) -> None:
    """The reply is ready with a weight falling linearly to min_weight at drain_at; at and
    above drain_at it stays at min_weight: the agent never drains."""
    assert agent_reply(Load(cpu=cpu), thresholds) == expected


def test_agent_reply_weight_never_below_min_nor_rises_with_load() -> None:
    """Across the range, saturation included, the reply is always ``ready N%`` with N monotone
    non-increasing in [min_weight, 100]: no load makes the agent drain."""
    weights = []
    for i in range(0, 151):
        line = agent_reply(Load(cpu=i / 100), DEFAULT)
        assert line.startswith("ready ") and line.endswith("%\n")
        weights.append(int(line[6:-2]))
    assert weights == sorted(weights, reverse=True)
    assert min(weights) >= DEFAULT.min_weight and max(weights) == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"full_below": 0.9, "drain_at": 0.9},
        {"full_below": -0.1},
        {"drain_at": math.nan},
        {"min_weight": 0},
        {"min_weight": 101},
    ],
    ids=["empty-range", "negative", "nan", "weight-0", "weight-101"],
)
def test_thresholds_refuse_nonsense(kwargs: dict[str, float]) -> None:
    """Thresholds that cannot give a sensible reply are refused at construction."""
    with pytest.raises(ValueError):
        Thresholds(**kwargs)  # type: ignore[arg-type]


# ---- cgroup v2 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("50000 100000\n", 0.5),
        ("150000\n", 1.5),
        ("", None),
        ("lots 100000\n", None),
        ("0 100000\n", None),
    ],
    ids=["unlimited", "two-cpus", "half-cpu", "default-period", "empty", "garbage", "zero"],
)
def test_parse_cpu_max(text: str, expected: float | None) -> None:
    """cpu.max's quota/period gives the CPUs; "max" or a bad file means no quota."""
    assert parse_cpu_max(text) == expected


def write_cgroup(root: Path, **files: str) -> Path:
    for name, text in files.items():
        (root / name.replace("_", ".")).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, Cgroup()),
        (
            {"cpu_max": "200000 100000\n", "memory_max": "max\n", "memory_current": "1000\n"},
            Cgroup(cpus=2.0),
        ),
        (
            {"cpu_max": "max 100000\n", "memory_max": "4000\n", "memory_current": "1000\n"},
            Cgroup(memory=0.25),
        ),
        ({"memory_max": "4000\n"}, Cgroup()),
        ({"memory_max": "4000\n", "memory_current": "oops\n"}, Cgroup()),
        ({"cpu_stat": "usage_usec 123456\nuser_usec 100000\n"}, Cgroup(usage_usec=123456)),
    ],
    ids=[
        "no-files",
        "cpu-quota-memory-unlimited",
        "memory-limit-no-cpu-quota",
        "memory-current-missing",
        "memory-current-garbage",
        "cpu-stat",
    ],
)
def test_read_cgroup(tmp_path: Path, files: dict[str, str], expected: Cgroup) -> None:
    """Limits are read where present; absent, "max" or unreadable files mean no limit."""
    assert read_cgroup(write_cgroup(tmp_path, **files)) == expected


def test_reader_uses_cgroup_limits(tmp_path: Path) -> None:
    """Under a cgroup, cpus is the quota (capped by affinity) and memory the share of the limit."""
    write_cgroup(tmp_path, cpu_max="50000 100000\n", memory_max="4000\n", memory_current="3000\n")
    load = LoadReader(tmp_path).read()
    assert load.cpus == 0.5
    assert load.memory == 0.75
    assert load.cpu is None  # not sampled yet


def test_reader_falls_back_to_host_without_cgroup(tmp_path: Path) -> None:
    """Without cgroup files every host reading is present and finite."""
    load = LoadReader(tmp_path / "missing").read()
    for name in ("load_per_core", "memory", "cpus"):
        value = getattr(load, name)
        assert value is not None and math.isfinite(value) and value >= 0, name
    assert load.memory is not None and load.memory <= 1


def test_reader_cpu_is_the_share_of_the_cgroup_quota(tmp_path: Path) -> None:
    """With a CPU quota, cpu is the usage_usec delta over elapsed time and quota."""
    now = [100.0]
    write_cgroup(tmp_path, cpu_max="200000 100000\n", cpu_stat="usage_usec 1000000\n")
    reader = LoadReader(tmp_path, clock=lambda: now[0])
    reader.sample()  # primes
    now[0] += 1.0
    write_cgroup(tmp_path, cpu_stat="usage_usec 2500000\n")  # 1.5 CPU-seconds in 1 s of 2 CPUs
    reader.sample()
    assert reader.read().cpu == pytest.approx(0.75)


def test_one_failing_source_leaves_only_its_field_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that raises or returns a non-finite value is left out, the rest still read."""

    def broken() -> object:
        raise OSError("no /proc/loadavg")

    monkeypatch.setattr(os, "getloadavg", broken)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: math.nan)
    reader = LoadReader(tmp_path)
    with capture_logs() as logs:
        reader.sample()
        reader.sample()
        load = reader.read()
        reader.read()
    assert load.load_per_core is None and load.cpu is None
    assert load.memory is not None and load.cpus is not None
    assert set(load.as_dict()) == {"memory", "cpus"}
    failed = [e for e in logs if e["event"] == "load_source_failed"]
    assert [e["source"] for e in failed] == ["load_per_core"]  # once, not every read


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9111", ("127.0.0.1", 9111)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9111", ("::1", 9111)),
        ("localhost:0", ("localhost", 0)),
    ],
    ids=["loopback", "any", "ipv6", "kernel-port"],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    """Listen addresses are HOST:PORT, IPv6 in brackets."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9111", ":9111", "host:", "host:70000", "host:x"])
def test_parse_listen_refuses(text: str) -> None:
    """A missing host or a bad port is refused."""
    with pytest.raises(ValueError):
        parse_listen(text)


# ---- serving ----------------------------------------------------------------------------


async def test_health_endpoint_returns_finite_numbers(tmp_path: Path) -> None:
    """GET /health on a running agent answers ok with finite load numbers, cpu once sampled."""
    async with (
        Agent("127.0.0.1:0", cgroup_root=tmp_path, sample_interval=0.05) as agent,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{agent.http_port}/health"
        body: dict[str, object] = {}

        async def sampled() -> bool:
            nonlocal body
            async with session.get(url) as resp:
                assert resp.status == 200
                body = await resp.json()
            return "cpu" in body

        await wait_until(sampled, within=3.0, what="a cpu sample")
        assert body["status"] == "ok"
        for name in ("cpu", "load_per_core", "memory", "cpus"):
            value = body[name]
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, name
        assert str(body["agent"]).startswith(("ready", "drain"))
        async with session.post(url) as resp:
            assert resp.status == 405


async def test_agent_port_replies_at_once_and_ignores_agent_send() -> None:
    """The agent answers one line without waiting for input, with or without agent-send."""
    source = FixedLoad(cpu=0.75)
    async with Agent("127.0.0.1:0", agent_port=0, source=source) as agent:
        assert agent.agent_port
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await agent_line(agent.agent_port) == b"ready 50%\n"
        assert loop.time() - started < agent_mod.AGENT_TIMEOUT * 0.8
        assert await agent_line(agent.agent_port, b"hello from haproxy\n") == b"ready 50%\n"
        source.set_cpu(0.99)
        assert await agent_line(agent.agent_port, b"x" * 100_000) == b"ready 10%\n"


async def test_agent_reply_logged_only_when_it_changes() -> None:
    """agent_reply is logged at debug level, once per change, not per connection."""
    source = FixedLoad(cpu=0.1)
    with capture_logs() as logs:
        async with Agent("127.0.0.1:0", agent_port=0, source=source) as agent:
            assert agent.agent_port
            for _ in range(3):
                await agent_line(agent.agent_port)
            source.set_cpu(0.99)
            await agent_line(agent.agent_port)
    replies = [(e["log_level"], e["reply"]) for e in logs if e["event"] == "agent_reply"]
    assert replies == [("debug", "ready 100%"), ("debug", "ready 10%")]


async def test_agent_survives_a_broken_source() -> None:
    """A source that raises makes the agent answer ready 100%, and /health still answers."""

    class Broken:
        def read(self) -> Load:
            raise RuntimeError("boom")

    async with Agent("127.0.0.1:0", agent_port=0, source=Broken()) as agent:
        assert agent.agent_port
        assert await agent_line(agent.agent_port) == b"ready 100%\n"


async def test_run_agent_serves_until_stopped() -> None:
    """run_agent logs agent_started, serves, and returns 0 once the stop event is set."""
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(
            run_agent("127.0.0.1:0", 0, source=FixedLoad(cpu=0.2), stop=stop)
        )

        async def started() -> bool:
            return any(e["event"] == "agent_started" for e in logs)

        await wait_until(started, within=3.0, what="agent_started")
        stop.set()
        assert await asyncio.wait_for(task, 3.0) == 0
    assert [e["event"] for e in logs][-1] == "agent_stopped"


async def test_run_agent_reports_a_busy_port() -> None:
    """An address already in use gives exit code 1 and a logged error, nothing left running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with capture_logs() as logs:
            code = await run_agent(f"127.0.0.1:{port}", source=FixedLoad(), stop=asyncio.Event())
    assert code == 1
    assert [e["event"] for e in logs] == ["agent_bind_failed"]


# ---- against a real HAProxy -------------------------------------------------------------


@pytest.mark.integration
async def test_haproxy_weight_follows_the_agent(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """A real HAProxy agent-check sets s1's weight from the agent's replies, down to the
    minimum when saturated, and s1 stays ready."""
    source = FixedLoad(cpu=0.75)
    async with Agent("127.0.0.1:0", agent_port=0, source=source) as agent:
        servers = [
            ServerSpec(
                "s1",
                "127.0.0.1",
                api_servers.ports[0],
                100,
                f"agent-check agent-port {agent.agent_port} agent-inter 1s agent-send hello\\n",
            ),
            ServerSpec("s2", "127.0.0.1", api_servers.ports[1], 100),
        ]
        handle = await haproxy_factory({"api": servers})
        driver = HAProxyDriver([handle.socket], 2.0)
        member: Member | None = None

        def shows(admin: AdminState, weight: int | None) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                nonlocal member
                snap = await driver.snapshot("api")
                member = next(m for m in snap.members if m.id == ServerId("api", "s1"))
                return member.admin == admin and (weight is None or member.weight == weight)

            return check

        try:
            await wait_until(shows(AdminState.READY, 50), within=5.0, what="s1 at weight 50")
            assert member is not None and member.has_agent

            source.set_cpu(0.99)
            await wait_until(shows(AdminState.READY, 10), within=5.0, what="s1 at weight 10")

            source.set_cpu(0.1)
            await wait_until(shows(AdminState.READY, 100), within=5.0, what="s1 back at 100")
        finally:
            await driver.close()
            await handle.proc.stop()


@pytest.mark.integration
async def test_saturated_agents_cannot_empty_the_pool(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """Every server's agent at 99 % CPU: HAProxy hears them all (weights fall to the minimum),
    yet no server is drained and the frontend still answers; draining is the daemon's call."""
    sources = [FixedLoad(cpu=0.99) for _ in range(3)]
    agents = [Agent("127.0.0.1:0", agent_port=0, source=source) for source in sources]
    for agent in agents:
        await agent.start()
    handle = await haproxy_factory(
        {
            "api": [
                ServerSpec(
                    f"s{i + 1}",
                    "127.0.0.1",
                    api_servers.ports[i],
                    100,
                    f"agent-check agent-port {agent.agent_port} agent-inter 1s",
                )
                for i, agent in enumerate(agents)
            ]
        }
    )
    driver = HAProxyDriver([handle.socket], 2.0)
    members: list[Member] = []

    async def all_heard() -> bool:
        nonlocal members
        members = list((await driver.snapshot("api")).members)
        return all(m.weight == 10 or m.admin is not AdminState.READY for m in members)

    try:
        await wait_until(all_heard, within=6.0, what="every agent's reply applied")
        assert [(m.id.server, m.admin, m.weight) for m in members] == [
            (f"s{i}", AdminState.READY, 10) for i in (1, 2, 3)
        ]
        async with aiohttp.ClientSession() as session, session.get(handle.url) as resp:
            assert resp.status == 200
    finally:
        await driver.close()
        for agent in agents:
            await agent.close()
