"""`lbhealthd run` as a real process: JSON logs, SIGHUP reload, SIGTERM within 2 s."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from lbhealthd.drivers.haproxy.process import free_port
from tests.daemon_harness import (
    FAST,
    LBView,
    log_events,
    logged,
    run_refused,
    start_daemon,
    wait_for,
)
from tests.fixtures_haproxy import ApiServers, HAProxyHandle

pytestmark = pytest.mark.integration


def _write_config(path: Path, socket: str, state_dir: Path, **pool: object) -> None:
    doc = {
        "daemon": {
            "state_dir": str(state_dir),
            "round_interval": "100ms",
            "control_socket": str(state_dir.parent / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
        },
        "load_balancer": {"haproxy": {"sockets": [socket], "timeout": "1s"}},
        "pools": [{"name": "api", **FAST, **pool}],
    }
    path.write_text(yaml.safe_dump(doc))


async def test_run_reload_and_stop(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """The daemon logs JSON, keeps its config on a bad reload, and stops on SIGTERM in 2 s."""
    config = tmp_path / "lbhealthd.yaml"
    _write_config(config, haproxy.socket, tmp_path / "state")
    log = tmp_path / "daemon.log"
    lb = LBView(haproxy.socket)
    proc = start_daemon(config, log)
    try:
        await wait_for(lambda: logged(log, "started"), 10, "start")
        api_servers.set(0, cpu=0.97)
        await wait_for(lambda: _has(lb, {"s1"}), 5, "s1 drained")

        config.write_text("pools:\n  - name: api\n    fall: 0\n")
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: logged(log, "config_reload_failed"), 5, "refusal")
        assert proc.poll() is None, "a bad reload must not stop the daemon"

        api_servers.set(1, cpu=0.97)  # the running config still drains
        await wait_for(lambda: _has(lb, {"s1", "s2"}), 5, "s2 drained after the bad reload")

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await wait_for(lambda: proc.poll() is not None and (proc.returncode,), 5, "exit")
        assert code == (0,)
        assert time.monotonic() - started < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    events = log_events(log)
    refused = next(e for e in events if e["event"] == "config_reload_failed")
    assert any("pools[0].fall" in p for p in refused["problems"])  # type: ignore[attr-defined]
    drained = [e for e in events if e["event"] == "server_drained"]
    assert {e["server"] for e in drained} == {"api/s1", "api/s2"}
    assert all(e["rule"] == "fall" and e["evidence"]["signals"]["cpu"] >= 0.9 for e in drained)  # type: ignore[index]
    assert events[-1]["event"] == "stopped"
    # Stopping leaves the daemon's drains in place: a restart resumes them.
    assert await lb.drained() == {"s1", "s2"}


async def _has(lb: LBView, names: set[str]) -> bool:
    return await lb.drained() == names


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    """`run` with an invalid file exits 2 before doing anything, naming the field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools:\n  - name: api\n    rise: 0\n")
    done = run_refused(bad)
    assert done.returncode == 2
    assert "pools[0].rise" in done.stderr


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbhealthd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_refused_sighup_is_seen_and_lbhealthd_reload_fixes_it(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """After a SIGHUP with an invalid file, /metrics says 0, `status` shows the refusal (with a
    warning of the invalid file; `--check` 1 on a good one); `lbhealthd reload` of the fixed
    file exits 0 with the change, and the log's `config_reloaded` lists it."""
    config = tmp_path / "lbhealthd.yaml"
    _write_config(config, haproxy.socket, tmp_path / "state")
    good = config.read_text()
    address = yaml.safe_load(good)["daemon"]["http"]
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log)
    try:
        await wait_for(lambda: logged(log, "started"), 10, "start")
        metric = "lbhealthd_config_last_reload_successful"
        assert await asyncio.to_thread(_metric, address, metric) == 1.0

        config.write_text(good.replace("fall: 3", "fall: 0"))
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: logged(log, "config_reload_failed"), 5, "refusal")
        assert await asyncio.to_thread(_metric, address, metric) == 0.0
        done = await asyncio.to_thread(_run_cli, "status", "-c", str(config))
        assert done.returncode == 0, done.stderr  # the daemon's view; the file warned of
        assert "ALERT config_reload: config reload refused at" in done.stdout
        assert "pools[0].fall" in done.stdout and "pools[0].fall" in done.stderr
        assert "talking to the running daemon anyway" in done.stderr

        config.write_text(good.replace("fall: 3", "fall: 4"))
        done = await asyncio.to_thread(_run_cli, "status", "--check", "-c", str(config))
        assert done.returncode == 1
        assert "running the config loaded at" in done.stdout

        done = await asyncio.to_thread(_run_cli, "reload", "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert "pools[api].fall: 3 -> 4" in done.stdout
        assert await asyncio.to_thread(_metric, address, metric) == 1.0
        done = await asyncio.to_thread(_run_cli, "status", "--check", "-c", str(config))
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    reloaded = [e for e in log_events(log) if e["event"] == "config_reloaded"]
    assert [e["changed"] for e in reloaded] == [["pools[api].fall: 3 -> 4"]]


def _metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
