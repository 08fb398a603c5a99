"""A real Prometheus scrapes a real daemon driving a real HAProxy, with the alert rules loaded:
every rule evaluates without error on what the daemon exports, and a pool the daemon drains to
its cap is seen by the rule that watches for it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

from tests.daemon_harness import LBView, make_config, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle, free_port
from tests.required_tools import require

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "lbhealthd-rules.yml"


def _setup(workdir: Path, target: str, port: int) -> tuple[list[str], IO[bytes]]:
    """Prometheus' config in ``workdir``: scrape ``target`` as job lbhealthd every second, with
    the rules loaded. Its command line, and its log file opened."""
    workdir.mkdir()
    shutil.copy(RULES, workdir / RULES.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        "scrape_configs": [{"job_name": "lbhealthd", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        require("prometheus", "prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return argv, (workdir / "prometheus.log").open("wb")


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, target: str) -> AsyncIterator[str]:
    """Prometheus on a free loopback port (see ``_setup``); its URL. Stopped by its pid."""
    port = free_port()
    argv, log = _setup(workdir, target, port)
    with log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def api(http: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer; None while Prometheus is not up yet."""
    try:
        async with http.get(f"{url}/api/v1/{path}", params=params) as resp:
            if resp.status != 200:
                return None
            return (await resp.json())["data"]
    except aiohttp.ClientConnectionError:
        return None


@pytest.mark.integration
async def test_prometheus_evaluates_the_rules_on_a_live_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """Two of five servers overloaded: the daemon drains both, which puts the pool at its
    40 % cap; Prometheus sees it and LbhealthdPoolAtDrainCap is pending, while every rule
    evaluates without error and nothing else is pending or firing."""
    port = free_port()
    own = {"control_socket": str(tmp_path / "control.sock"), "http": f"127.0.0.1:{port}"}
    config = make_config([haproxy.socket], tmp_path / "state", daemon=own)
    lb = LBView(haproxy.socket)
    async with (
        aiohttp.ClientSession() as http,
        running(config),
        prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as url,
    ):

        async def scraped() -> bool:
            found = await api(http, url, "query", query='up{job="lbhealthd"} == 1')
            return bool(found and found["result"])

        await wait_for(scraped, 30, "Prometheus scraping the daemon", interval=0.2)
        api_servers.set(0, cpu=0.97)
        api_servers.set(1, cpu=0.97)
        await wait_for(lambda: _drained_two(lb), 10, "s1 and s2 drained", interval=0.1)

        async def at_cap() -> bool:
            found = await api(http, url, "query", query='lbhealthd_pool_at_cap{pool="api"} == 1')
            return bool(found and found["result"])

        await wait_for(at_cap, 20, "the pool at its cap in Prometheus", interval=0.2)

        async def evaluated() -> dict[str, Any] | None:
            groups = await api(http, url, "rules", type="alert")
            rules = {r["name"]: r for g in groups["groups"] for r in g["rules"]}
            capped = rules.get("LbhealthdPoolAtDrainCap", {})
            return rules if capped.get("state") == "pending" else None

        rules = await wait_for(evaluated, 20, "LbhealthdPoolAtDrainCap pending", interval=0.2)
        errors = {name: r["lastError"] for name, r in rules.items() if r["health"] != "ok"}
        assert errors == {}
        active = {name for name, r in rules.items() if r["state"] != "inactive"}
        assert active == {"LbhealthdPoolAtDrainCap"}
        [alert] = rules["LbhealthdPoolAtDrainCap"]["alerts"]
        assert alert["labels"]["pool"] == "api"
        assert alert["annotations"]["summary"] == "Pool api is at its drain cap"


async def _drained_two(lb: LBView) -> bool:
    return await lb.drained() == {"s1", "s2"}
