"""`lbhealthd demo`: the capacity model, and the short demo run end to end as a process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbhealthd.demo import scenario
from lbhealthd.demo.capacity import ApiServer, Capacity
from lbhealthd.drivers.haproxy.process import find_haproxy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Run:
    out: Path
    done: subprocess.CompletedProcess[str]

    def events(self) -> list[dict[str, Any]]:
        lines = (self.out / "daemon.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return doc


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One `python -m lbhealthd.demo --short` run shared by the tests below."""
    if find_haproxy() is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, "-m", "lbhealthd.demo", "--short", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Run(out, done)


@pytest.fixture(scope="module")
def enforced_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One `python -m lbhealthd.demo --short --enforce` run."""
    if find_haproxy() is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    out = tmp_path_factory.mktemp("demo-enforce")
    done = subprocess.run(
        [sys.executable, "-m", "lbhealthd.demo", "--short", "--enforce", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Run(out, done)


@pytest.mark.integration
def test_short_demo_with_enforce_sets_the_weights_back_before_the_overload(
    enforced_run: Run,
) -> None:
    """With --enforce the daemon sets s3-s5 back to 100 in its first round: nothing is
    drained, nothing fails, and the summary says so on its own line."""
    run = enforced_run
    assert run.done.returncode == 0, run.done.stdout + run.done.stderr
    events = run.events()
    started = next(i for i, e in enumerate(events) if e["event"] == "started")
    enforced = [e for e in events if e["event"] == "weight_enforced"]
    assert {e["server"] for e in enforced} == {"api/s3", "api/s4", "api/s5"}
    assert events.index(enforced[0]) > started
    assert not [e for e in events if e["event"] == "server_drained"]
    assert "weights set back by lbhealthd (enforce_weights on): 3" in run.done.stdout
    summary = run.done.stdout.partition("=== summary ===")[2]
    load = next(line for line in summary.splitlines() if line.startswith("load: "))
    assert load.endswith(" 0 failed (0.0%)"), load
    assert "api/s3 weight 1 -> 100 (enforce_weights)" in run.done.stdout
    assert (run.out / "demo.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.integration
def test_short_demo_exits_0_with_a_summary(short_run: Run) -> None:
    """The short demo completes, exits 0 and prints its summary and the plot's path."""
    assert short_run.done.returncode == 0, short_run.done.stdout + short_run.done.stderr
    assert "=== summary ===" in short_run.done.stdout
    assert f"plot: {short_run.out / 'demo.png'}" in short_run.done.stdout


@pytest.mark.integration
def test_short_demo_drains_the_overloaded_servers(short_run: Run) -> None:
    """The daemon drains s1 and s2, the two servers the weights overload."""
    drained = {e["server"] for e in short_run.events() if e["event"] == "server_drained"}
    assert {"api/s1", "api/s2"} <= drained
    assert not drained & {"api/s3", "api/s4", "api/s5"}


@pytest.mark.integration
def test_short_demo_fires_the_balance_alert(short_run: Run) -> None:
    """The balance alert fires and names s1 or s2 as getting more than its share."""
    fired = [e for e in short_run.events() if e["event"] == "balance_alert_fired"]
    assert fired, "no balance_alert_fired event in the daemon log"
    culprits = {str(c).rpartition("/")[2] for c in fired[0]["culprits"]}
    assert culprits & {"s1", "s2"}


@pytest.mark.integration
def test_short_demo_writes_a_png(short_run: Run) -> None:
    """The plot is a PNG of more than 10 KB."""
    data = (short_run.out / "demo.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000


@pytest.mark.integration
def test_short_demo_leaves_no_process_behind(short_run: Run) -> None:
    """HAProxy, the daemon and the audit command it started are all gone after it returns."""
    pids = {k: v for k, v in short_run.summary()["pids"].items() if v is not None}
    assert {"haproxy", "daemon"} <= pids.keys()
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
            pytest.fail(f"{name} (pid {pid}) is still running")
    marker = str(short_run.out).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert marker not in cmdline, f"pid {proc.name} still runs: {cmdline!r}"


def test_demo_without_haproxy_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without the haproxy binary the demo exits 2 and names the package to install."""
    monkeypatch.setattr(scenario, "find_haproxy", lambda: None)
    assert scenario.run_demo(tmp_path / "out", short=True) == 2
    assert "sudo apt-get install haproxy" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


async def test_capacity_model_queues_then_refuses() -> None:
    """Beyond its slots a server queues, /health reports it at once, and past the queue limit
    the server answers 503."""
    server = ApiServer("s1", Capacity(concurrency=1, service_time=0.2, jitter=0, queue_limit=2))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}"

            async def call() -> int:
                async with http.get(f"{url}/api") as response:
                    return response.status

            calls = [asyncio.create_task(call()) for _ in range(4)]
            await asyncio.sleep(0.1)
            async with http.get(f"{url}/health") as response:
                health = await response.json()
            statuses = sorted(await asyncio.gather(*calls))
    finally:
        await server.stop()
    assert health["inflight"] == 1 and health["queued"] == 2
    assert 0 < health["load"] < 3  # rising toward (1 + 2) / 1, smoothed over about a second
    assert statuses == [200, 200, 200, 503]
    assert (server.served, server.rejected) == (3, 1)
