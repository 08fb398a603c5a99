"""A flood of idle connections against the daemon's listeners, from another user, with the
descriptor limit of a default systemd service scaled down (256, so that 300 connections are a
flood): the daemon keeps draining, /healthz and the control socket keep answering, nothing
runs out of descriptors, and the log stays small."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from lbhealthd.drivers.haproxy.process import free_port
from tests.daemon_harness import FAST, LBView, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to flood as another user"),
]

FLOOD = 300
NOFILE = 256
NOBODY = 65534
_FORK = multiprocessing.get_context("fork")


def with_limit(nofile: int) -> str:
    """`lbhealthd` (its arguments follow) with the soft and hard descriptor limits set first."""
    return (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n"
        "from lbhealthd.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def _flood(
    family: int, address: Any, uid: int | None, said: Any, stop: Any, count: int = FLOOD
) -> None:
    """Open ``count`` connections to ``address`` (as ``uid``), send nothing, hold them until
    ``stop``; say how many connected."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    held = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(address)
            held.append(s)
        except OSError:
            s.close()
    said.put(len(held))
    stop.wait(60)
    for s in held:
        s.close()


def _events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            events.append({"event": "not json", "line": line})
    return events


async def _healthz(port: int) -> int | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_a_flood_of_idle_connections_does_not_blind_the_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """300 idle connections on the HTTP listener (from user nobody) and 300 on the control
    socket, with the descriptor limit at 256: an overloaded server is still drained, /healthz
    answers, `lbhealthd drain` works through the socket, no descriptor runs out, and the log
    holds no traceback."""
    port = free_port()
    config = tmp_path / "lbhealthd.yaml"
    run = tmp_path / "run"
    config.write_text(
        yaml.safe_dump(
            {
                "daemon": {
                    "state_dir": str(tmp_path / "state"),
                    "round_interval": "100ms",
                    "control_socket": str(run / "control.sock"),
                    "http": f"127.0.0.1:{port}",
                },
                "load_balancer": {"haproxy": {"sockets": [haproxy.socket], "timeout": "1s"}},
                "pools": [{"name": "api", **FAST}],
            }
        )
    )
    log = tmp_path / "daemon.log"
    lb = LBView(haproxy.socket)
    stop = _FORK.Event()
    floods: list[Any] = []
    with log.open("wb") as err:
        daemon = subprocess.Popen(
            [sys.executable, "-c", with_limit(NOFILE), "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await wait_for(lambda: any(e["event"] == "started" for e in _events(log)), 10, "start")
        await wait_for(lambda: _healthz(port), 5, "/healthz before the flood")
        targets = [
            (socket.AF_INET, ("127.0.0.1", port), NOBODY),
            (socket.AF_UNIX, str(run / "control.sock"), None),
        ]
        for family, address, uid in targets:
            said = _FORK.Queue()
            child = _FORK.Process(target=_flood, args=(family, address, uid, said, stop))
            child.start()
            floods.append((child, said))
        connected = [await asyncio.to_thread(said.get, True, 60) for _, said in floods]
        assert all(n > 0 for n in connected), connected

        flooded_at = time.monotonic()
        api_servers.set(0, cpu=0.97)
        await wait_for(lambda: _drained(lb, {"s1"}), 5, "s1 drained during the flood")
        assert await wait_for(lambda: _healthz(port), 5, "/healthz during the flood") == 200
        assert psutil.Process(daemon.pid).num_fds() <= NOFILE * 3 // 4  # a quarter kept free
        drain = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lbhealthd",
            "drain",
            "api/s4",
            "-c",
            str(config),
            "--reason",
            "during the flood",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, errors = await asyncio.wait_for(drain.communicate(), 30)
        assert drain.returncode == 0, errors.decode()
        assert b"via the running daemon" in out
        assert await lb.drained() == {"s1", "s4"}
        assert time.monotonic() - flooded_at < 15
        assert daemon.poll() is None
    finally:
        stop.set()
        for child, _ in floods:
            await asyncio.to_thread(child.join, 10)
        daemon.terminate()
        await asyncio.to_thread(daemon.wait, 10)
    text = log.read_text()
    assert "Traceback" not in text and "Too many open files" not in text
    assert len(text) < 200_000
    limited = [e for e in _events(log) if e["event"] == "connections_limited"]
    assert limited and {e["listener"] for e in limited} <= {"http", "control"}


async def _drained(lb: LBView, names: set[str]) -> bool:
    return await lb.drained() == names


async def test_a_flood_of_idle_connections_does_not_silence_the_agent(tmp_path: Path) -> None:
    """`lbhealthd agent` with 64 descriptors and 100 idle connections from user nobody on each
    of its ports: /health and the agent-check still answer, and the log stays small."""
    http, check = free_port(), free_port()
    log = tmp_path / "agent.log"
    stop = _FORK.Event()
    floods: list[Any] = []
    with log.open("wb") as err:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-c",
                with_limit(64),
                "agent",
                "--listen",
                f"127.0.0.1:{http}",
                "--agent-port",
                str(check),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await wait_for(
            lambda: any(e["event"] == "agent_started" for e in _events(log)), 10, "start"
        )
        for port in (http, check):
            said = _FORK.Queue()
            args = (socket.AF_INET, ("127.0.0.1", port), NOBODY, said, stop, 100)
            child = _FORK.Process(target=_flood, args=args)
            child.start()
            floods.append((child, said))
        assert all([await asyncio.to_thread(said.get, True, 60) for _, said in floods])

        async def health() -> int | None:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                    session.get(f"http://127.0.0.1:{http}/health") as r,
                ):
                    return r.status
            except (aiohttp.ClientError, TimeoutError):
                return None

        async def agent_check() -> bytes | None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", check), 1
                )
                line = await asyncio.wait_for(reader.readline(), 1)
                writer.close()
                return line
            except (OSError, TimeoutError):
                return None

        assert await wait_for(health, 5, "/health during the flood") == 200
        assert (await wait_for(agent_check, 5, "agent-check during the flood")).startswith(
            (b"ready", b"drain")
        )
    finally:
        stop.set()
        for child, _ in floods:
            await asyncio.to_thread(child.join, 10)
        agent.terminate()
        await asyncio.to_thread(agent.wait, 10)
    text = log.read_text()
    assert "Traceback" not in text and "Too many open files" not in text
    assert len(text) < 50_000
