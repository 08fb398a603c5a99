"""Faults: the LB going away or hanging, crashes mid-change, corrupt or full state_dir, and a
starved daemon. Against a real HAProxy; the daemon must never crash nor make things worse."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from lbhealthd.drivers.haproxy.process import free_port
from lbhealthd.model import ServerId
from tests.daemon_harness import (
    FAST,
    LBView,
    logged,
    make_config,
    run_refused,
    running,
    start_daemon,
    wait_for,
)
from tests.fixtures_haproxy import ApiServers, HAProxyHandle

pytestmark = pytest.mark.integration

S1 = ServerId("api", "s1")


async def test_lb_socket_that_never_answers(api_servers: ApiServers, tmp_path: Path) -> None:
    """A socket that accepts and never answers costs a bounded wait per round, no crash."""
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        mute.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(mute.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with capture_logs() as logs:
            async with running(make_config([f"unix:{path}"], tmp_path / "state")) as daemon:
                started = time.monotonic()
                await wait_for(lambda: daemon.reconciler.rounds >= 2, 10, "two rounds")
                per_round = (time.monotonic() - started) / 2
        assert per_round < 3.0  # the 1 s LB timeout bounds every exchange and its retries
        assert any(e["event"] == "lb_unavailable" for e in logs)
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        mute.close()


async def test_sigkill_then_restart_keeps_and_later_restores_the_drain(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """Killed with SIGKILL, the daemon restarts with its drain and restores it when healthy."""
    config = tmp_path / "lbhealthd.yaml"
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "round_interval": "100ms",
            "control_socket": str(tmp_path / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
        },
        "load_balancer": {"haproxy": {"sockets": [haproxy.socket], "timeout": "1s"}},
        "pools": [{"name": "api", **FAST}],
    }
    config.write_text(yaml.safe_dump(doc))
    lb = LBView(haproxy.socket)
    api_servers.set(0, cpu=0.97)
    first = start_daemon(config, tmp_path / "first.log")
    try:
        await wait_for(lambda: _drained(lb, {"s1"}), 10, "s1 drained")
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    finally:
        _kill(first)
    assert (tmp_path / "control.sock").exists()  # left behind: the next start must cope
    second = start_daemon(config, tmp_path / "second.log")
    try:
        await wait_for(
            lambda: logged(tmp_path / "second.log", "started", strict=False), 10, "restart"
        )
        await asyncio.sleep(0.5)  # several rounds: the drain must hold while s1 is sick
        assert await lb.drained() == {"s1"}
        api_servers.set(0, cpu=0.1)
        await wait_for(lambda: _drained(lb, set()), 10, "s1 restored")
    finally:
        _kill(second)
    sets = [
        json.loads(line) for line in (tmp_path / "state" / "actions.jsonl").read_text().splitlines()
    ]
    drains = [a for a in sets if a["action"] == "set_state" and a["value"] == "drain"]
    assert len(drains) == 1  # no double action


def test_corrupt_state_file_refuses_to_start(tmp_path: Path) -> None:
    """A corrupt overrides file stops the daemon from starting, naming the file."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.json").write_text('{"version": 1, "overrides": [{"server": "api/s1"')
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"daemon": {"state_dir": str(state)}, "pools": [{"name": "api"}]})
    )
    done = run_refused(config)
    assert done.returncode == 2
    assert "overrides.json" in done.stderr


def test_state_dir_writable_by_others_refuses_to_start(tmp_path: Path) -> None:
    """A state_dir every user may write stops the daemon from starting, naming it and the fix."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"daemon": {"state_dir": str(state)}, "pools": [{"name": "api"}]})
    )
    done = run_refused(config)
    assert done.returncode == 2
    assert f"{state}: writable by every user" in done.stderr
    assert f"chmod go-w {state}" in done.stderr


async def test_starved_daemon_freezes(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A daemon whose event loop is blocked drains nobody, though its probes look terrible."""
    lb = LBView(haproxy.socket)
    # Blindness off and a tight latency mark: only the starvation freeze stands in the way.
    config = make_config(
        [haproxy.socket],
        tmp_path / "state",
        probe={"interval": "500ms", "timeout": "500ms", "load_fields": {"cpu": "cpu"}},
        overload={"latency_ms": {"high": 200, "low": 100}},
    )
    for i in range(5):
        api_servers.set(i, delay=0.05)  # a probe spans 50 ms: stalls land inside probes
    with capture_logs() as logs:
        async with running(config) as daemon:
            await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                time.sleep(0.3)  # noqa: ASYNC251 - the point: the whole process stalls
                await asyncio.sleep(0.02)
            assert await lb.drained() == set()
    assert any(e["event"] == "daemon_starved" for e in logs)
    assert not [e for e in logs if e["event"] == "server_drained"]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


async def _drained(lb: LBView, names: set[str]) -> bool:
    return await lb.drained() == names
