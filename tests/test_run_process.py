"""`lbhealthd run` as a real process: JSON logs, SIGHUP reload, SIGTERM within 2 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lbhealthd.drivers.haproxy.process import free_port
from tests.daemon_harness import FAST, LBView, wait_for
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


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return out


async def test_run_reload_and_stop(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """The daemon logs JSON, keeps its config on a bad reload, and stops on SIGTERM in 2 s."""
    config = tmp_path / "lbhealthd.yaml"
    _write_config(config, haproxy.socket, tmp_path / "state")
    log = tmp_path / "daemon.log"
    lb = LBView(haproxy.socket)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbhealthd", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await wait_for(lambda: any(e["event"] == "started" for e in _events(log)), 10, "start")
        api_servers.set(0, cpu=0.97)
        await wait_for(lambda: _has(lb, {"s1"}), 5, "s1 drained")

        config.write_text("pools:\n  - name: api\n    fall: 0\n")
        proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: any(e["event"] == "config_reload_failed" for e in _events(log)), 5, "refusal"
        )
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
    events = _events(log)
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
    done = subprocess.run(
        [sys.executable, "-m", "lbhealthd", "run", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "pools[0].rise" in done.stderr
