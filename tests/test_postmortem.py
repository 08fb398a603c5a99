"""The postmortem's incident, replayed on a real HAProxy: a pool misweighted 100/100/1/1/1.

The balance monitor must see the skew within seconds and name s1 and s2; the audit must name
the wrong weights, in the live LB and in a candidate haproxy.cfg; --fix must set them back.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy
from tests.daemon_harness import make_config, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyFactory, api_backend

pytestmark = pytest.mark.integration

POSTMORTEM = (100, 100, 1, 1, 1)
WATCH = {
    "expected_weights": {"default": 100},
    "balance_alert": {"factor": 2.0, "for": "2s", "min_sessions": 50, "window": "3s"},
}


def misweighted(api_servers: ApiServers, weights: tuple[int, ...]) -> list[ServerSpec]:
    return [
        ServerSpec(s.name, s.host, s.port, w)
        for s, w in zip(api_backend(api_servers), weights, strict=True)
    ]


async def load(
    url: str, stop: asyncio.Event, seconds: float, max_requests: int, seed: int = 7
) -> int:
    """Bounded traffic through HAProxy's frontend: stops on ``stop``, time, or count."""
    rng = random.Random(seed)
    sent = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while not stop.is_set() and time.monotonic() < deadline and sent < max_requests:
            sent += 1
            async with session.get(url) as resp:
                await resp.read()
            await asyncio.sleep(rng.uniform(0.0, 0.01))  # per-request noise

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(8)))
    return sent


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbhealthd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write(path: Path, config: Any) -> Path:
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json(by_alias=True))))
    return path


async def test_balance_alert_audit_and_fix(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """Alert within 10 s naming s1 and s2; audit exits 1 naming the weights; --fix clears it."""
    lb = await haproxy_factory({"api": misweighted(api_servers, POSTMORTEM)})
    config = make_config([lb.socket], tmp_path / "state", **WATCH)
    path = write(tmp_path / "lbhealthd.yaml", config)
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with running(config):
            traffic = asyncio.create_task(load(lb.url, stop, seconds=40, max_requests=20_000))
            started = time.monotonic()
            fired = await wait_for(
                lambda: [e for e in logs if e["event"] == "balance_alert_fired"],
                10,
                "balance alert",
            )
            assert time.monotonic() - started <= 10
            assert set(fired[0]["culprits"]) == {"api/s1", "api/s2"}

            code, out, err = await cli("audit", "-c", str(path))
            assert code == 1, err
            for name in ("s3", "s4", "s5"):
                assert f"api/{name}: weight 1, expected 100" in out
            assert "api/s1" not in out

            code, out, err = await cli("audit", "-c", str(path), "--fix", "--yes", "--json")
            doc = json.loads(out)
            assert len(doc["fixed"]) == 3, err
            # The runtime weights are fixed; HAProxy's configuration still says 1, which the
            # next reload would bring back: the audit keeps saying so (exit 1).
            assert code == 1
            assert sorted(f["server"] for f in doc["findings"]) == ["s3", "s4", "s5"]
            assert all(f["actual"] == "configured 1 (now 100)" for f in doc["findings"])

            await wait_for(
                lambda: any(e["event"] == "balance_alert_cleared" for e in logs),
                12,
                "alert cleared",
            )
            stop.set()
            assert await traffic > 100
    actions = [
        json.loads(line) for line in (tmp_path / "state" / "actions.jsonl").read_text().splitlines()
    ]
    assert sorted(a["server"] for a in actions if a.get("rule") == "audit_fix") == [
        "api/s3",
        "api/s4",
        "api/s5",
    ]
    assert not [e for e in logs if e["event"] == "server_drained"]


async def test_no_false_alert_on_a_balanced_pool(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """Equal weights with noisy traffic never raise the balance alert."""
    lb = await haproxy_factory({"api": api_backend(api_servers)})
    config = make_config([lb.socket], tmp_path / "state", **WATCH)
    with capture_logs() as logs:
        async with running(config) as daemon:
            sent = await load(lb.url, asyncio.Event(), seconds=8, max_requests=4000, seed=11)
            assert sent > 500
            assert daemon.reconciler.watch.pools["api"].report is not None
    assert not [e for e in logs if e["event"] == "balance_alert_fired"]
    verdicts = [e for e in logs if e["event"] == "audit_drift"]
    assert verdicts == []


async def test_candidate_config_is_checked_before_deploy(tmp_path: Path) -> None:
    """--haproxy-cfg names the wrong weights of a candidate file, and quotes syntax errors."""
    if find_haproxy() is None:
        pytest.skip("haproxy binary not installed")
    servers = [ServerSpec(f"s{i + 1}", "127.0.0.1", 20001 + i, w) for i, w in enumerate(POSTMORTEM)]
    proc = HAProxyProcess(tmp_path / "cand", {"api": servers})
    proc.workdir.mkdir(parents=True)
    candidate = tmp_path / "haproxy.cfg"
    candidate.write_text(proc.config_text())
    config = make_config(["unix:/nonexistent.sock"], tmp_path / "state", **WATCH)
    path = write(tmp_path / "lbhealthd.yaml", config)

    code, out, err = await cli("audit", "-c", str(path), "--haproxy-cfg", str(candidate))
    assert code == 1, err
    for name in ("s3", "s4", "s5"):
        assert f"api/{name}: weight 1 in haproxy.cfg line" in out

    broken = tmp_path / "broken.cfg"
    broken.write_text(proc.config_text().replace("backend api", "backend api\n    bogus-keyword"))
    code, out, _ = await cli("audit", "-c", str(path), "--haproxy-cfg", str(broken))
    assert code == 1
    assert "INVALID" in out and "bogus-keyword" in out

    good = tmp_path / "good.cfg"
    good.write_text(
        proc.config_text().replace("weight 1\n", "weight 100\n").replace("weight 1 ", "weight 100 ")
    )
    code, out, err = await cli("audit", "-c", str(path), "--haproxy-cfg", str(good))
    assert code == 0, (out, err)


async def test_ha_pair_disagreement_is_reported(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """Two HAProxy processes that disagree on a server's state make the audit exit 1."""
    a = await haproxy_factory({"api": api_backend(api_servers)})
    b = await haproxy_factory({"api": api_backend(api_servers)})
    from lbhealthd.drivers.haproxy.driver import HAProxyDriver
    from lbhealthd.model import AdminState, ServerId

    await HAProxyDriver([b.socket]).set_state(ServerId("api", "s2"), AdminState.DRAIN)
    config = make_config([a.socket, b.socket], tmp_path / "state", **WATCH)
    path = write(tmp_path / "lbhealthd.yaml", config)
    code, out, err = await cli("audit", "-c", str(path), "--json")
    assert code == 1, err
    doc = json.loads(out)
    kinds = {(f["server"], f["kind"]) for f in doc["findings"]}
    assert ("s2", "endpoints_disagree") in kinds


async def test_unreadable_lb_exits_2(tmp_path: Path) -> None:
    """When no LB answers the audit cannot check: exit 2."""
    config = make_config([f"unix:{tmp_path}/none.sock"], tmp_path / "state", **WATCH)
    path = write(tmp_path / "lbhealthd.yaml", config)
    code, _, err = await cli("audit", "-c", str(path))
    assert code == 2 and "none.sock" in err


async def test_a_misweighted_pool_stays_flagged_while_its_heavy_servers_are_drained(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """The postmortem's pool with s1 and s2 overloaded: lbhealthd drains them, the traffic
    left looks even, and still the pool is flagged misweighted (status alert) and the balance
    alert does not clear; once `audit --fix` sets the weights right, the flag goes."""
    lb = await haproxy_factory({"api": misweighted(api_servers, POSTMORTEM)})
    config = make_config([lb.socket], tmp_path / "state", **WATCH)
    path = write(tmp_path / "lbhealthd.yaml", config)
    stop = asyncio.Event()

    async def alerts() -> set[str]:
        _, out, _ = await cli("status", "-c", str(path), "--json")
        return {a["rule"] for p in json.loads(out)["pools"] for a in p["alerts"]}

    with capture_logs() as logs:
        async with running(config) as daemon:
            traffic = asyncio.create_task(load(lb.url, stop, seconds=40, max_requests=20_000))
            await wait_for(
                lambda: any(e["event"] == "balance_alert_fired" for e in logs), 10, "alert"
            )
            api_servers.set(0, cpu=0.97)
            api_servers.set(1, cpu=0.97)
            await wait_for(
                lambda: {str(s) for s in daemon.writer.owned} == {"api/s1", "api/s2"},
                10,
                "s1 and s2 drained",
            )
            assert "misweighted" in await alerts()
            assert not any(e["event"] == "balance_alert_cleared" for e in logs)
            code, _, err = await cli("audit", "-c", str(path), "--fix", "--yes")
            assert code == 1, err  # the file still says 1: fixed at runtime only
            await wait_for(
                lambda: any(e["event"] == "pool_weights_right" for e in logs), 10, "weights right"
            )
            assert "misweighted" not in await alerts()
            stop.set()
            await traffic
