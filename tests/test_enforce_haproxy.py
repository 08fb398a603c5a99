"""enforce_weights against a real HAProxy: weights set by hand, and the stale file's weights,
are set back to expected_weights; the audit of the file keeps reporting it until it is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbhealthd.drivers.haproxy.process import ServerSpec
from lbhealthd.model import ServerId
from lbhealthd.oncall.audit import candidate
from lbhealthd.store import Store
from tests.daemon_harness import LBView, make_config, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyFactory

pytestmark = pytest.mark.integration

ENFORCE = {"expected_weights": {"default": 100}, "enforce_weights": True}


async def test_weights_set_by_hand_are_set_back_under_enforce_weights(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    # The postmortem's file: 100/100/1/1/1 where 100 is expected everywhere.
    specs = [
        ServerSpec(f"s{i + 1}", "127.0.0.1", port, 100 if i < 2 else 1)
        for i, port in enumerate(api_servers.ports)
    ]
    haproxy = await haproxy_factory({"api": specs})
    lb = LBView(haproxy.socket)
    config = make_config([haproxy.socket], tmp_path / "state", **ENFORCE)

    async def weights() -> dict[str, int]:
        return {name: m.weight for name, m in (await lb.members()).items()}

    async def all_expected() -> bool:
        return set((await weights()).values()) == {100}

    async with running(config) as daemon:
        await wait_for(all_expected, 5, "the stale file's weights set back")
        await lb.driver.set_weight(ServerId("api", "s2"), 7)  # by hand, on the socket
        assert (await weights())["s2"] == 7
        await wait_for(all_expected, 5, "the weight set by hand set back")
        rounds = daemon.reconciler.rounds
        await wait_for(lambda: daemon.reconciler.rounds >= rounds + 3, 5, "more rounds")
        assert await all_expected()
    sets = [a for a in Store(tmp_path / "state").read_actions() if a["action"] == "set_weight"]
    assert sorted((a["server"], a["previous"], a["value"]) for a in sets) == [
        ("api/s2", 7, 100),
        ("api/s3", 1, 100),
        ("api/s4", 1, 100),
        ("api/s5", 1, 100),
    ]
    assert {a["rule"] for a in sets} == {"enforce_weights"}
    # The file still says 1: the audit of the file keeps reporting it.
    outcome = candidate(config, str(haproxy.proc.config_path))
    assert outcome.code == 1, outcome.lines
    assert any("s3" in line for line in outcome.lines)


async def test_weights_set_by_hand_stay_without_enforce_weights(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """The twin: enforce_weights off, the same weight set by hand stays."""
    specs = [ServerSpec(f"s{i + 1}", "127.0.0.1", p, 100) for i, p in enumerate(api_servers.ports)]
    haproxy = await haproxy_factory({"api": specs})
    lb = LBView(haproxy.socket)
    config = make_config([haproxy.socket], tmp_path / "state", expected_weights={"default": 100})
    async with running(config) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        await lb.driver.set_weight(ServerId("api", "s2"), 7)
        rounds = daemon.reconciler.rounds
        await wait_for(lambda: daemon.reconciler.rounds >= rounds + 5, 5, "more rounds")
        assert (await lb.members())["s2"].weight == 7
