"""What `restore` says and does, against a real HAProxy: of a server still sick (through the
running daemon), and of a server left at a slow-start weight (with the daemon down)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lbhealthd.model import AdminState
from lbhealthd.store import Store
from tests.daemon_harness import LBView, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle
from tests.test_oncall import cli, config_of, write_config

pytestmark = pytest.mark.integration


async def test_restore_of_a_server_still_sick_says_what_comes_next(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A restore of a server lbhealthd drained for overload says it is still overloaded, by
    which signal, that the hold keeps it in and when lbhealthd drains it again; a second
    restore ends the hold and says the server is out again, and why, exit 0."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with running(config_of(path)) as daemon:
        api_servers.set(0, cpu=0.95)
        await wait_for(lambda: _state(lb, "s1", AdminState.DRAIN), 5, "s1 drained")
        code, out, err = await cli("restore", "api/s1", "-c", str(path), "--reason", "fix out")
        assert code == 0, err
        first, second = out.splitlines()
        assert first.startswith("restore: api/s1 is back in rotation")
        assert re.search(r"kept in rotation for 600s, until \d{4}-\d\d-\d\d .* UTC", first)
        assert "(your reason: fix out) (via the running daemon)" in first
        assert second.startswith("api/s1 is still overloaded (cpu 0.95 >= 0.9): lbhealthd")
        assert "during the hold; when the hold ends, it drains it again at once, caps" in second
        assert "3 bad samples in a row (fall 3)" in second
        assert (await lb.states())["s1"] is AdminState.READY
        for _ in range(8):  # held in, overloaded all along
            await wait_for(lambda: daemon.reconciler.rounds >= 1, 1, "round")
        assert (await lb.states())["s1"] is AdminState.READY
        code, out, _ = await cli("status", "-c", str(path), "--json")
        s1 = json.loads(out)["pools"][0]["servers"][0]
        assert s1["override"]["reason"] == "restored by an operator: fix out"
        assert s1["bad"] >= 3 and s1["blocked"]["rule"] == "override"

        code, out, err = await cli("restore", "api/s1", "-c", str(path))
        assert code == 0, err
        first, second = out.splitlines()
        assert first.startswith("restore: ended the keep-in hold set by ")
        assert "is now" not in first
        assert second.startswith("api/s1 is out of rotation again: lbhealthd took it out at")
        assert "overloaded samples in a row (fall 3): cpu 0.95 >= 0.9 (rule fall)" in second
        assert (await lb.states())["s1"] is AdminState.DRAIN
    requested = [
        a for a in Store(tmp_path / "state").read_actions() if a["action"] == "restore_requested"
    ]
    assert [(a["reason"], a["kept_in"]) for a in requested] == [("fix out", True), (None, False)]
    assert requested[0]["who"] and requested[0]["until"] > requested[0]["ts"]


async def test_restore_of_a_healthy_server_in_rotation_says_it_stays(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A restore with nothing to undo says the server is in rotation, healthy, and when
    lbhealthd would drain it."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
        code, out, err = await cli("restore", "api/s2", "-c", str(path))
        assert code == 0, err
        assert out.splitlines() == [
            "restore: nothing to undo (via the running daemon)",
            "api/s2 is in rotation, not held, healthy at its last sample: lbhealthd drains it "
            "only after 3 bad samples in a row (fall 3)",
        ]


async def test_restore_with_the_daemon_down_sets_back_the_weight_lbhealthd_lowered(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A server the daemon left at a slow-start weight (drained again mid-ramp, or still
    ramping) gets its full weight back from a restore with the daemon down, said so; the
    daemon started afterwards finds nothing to report."""
    path = write_config(tmp_path, haproxy.socket, slow_start="60s", min_drain="200ms")
    lb = LBView(haproxy.socket)
    async with running(config_of(path)):
        api_servers.set(0, cpu=0.95)
        await wait_for(lambda: _state(lb, "s1", AdminState.DRAIN), 5, "s1 drained")
        api_servers.set(0, cpu=0.1)
        await wait_for(lambda: _ramping(lb, "s1"), 5, "s1 back at a slow-start weight")
        api_servers.set(0, cpu=0.95)  # sick again at the ramp's floor: drained again
        await wait_for(lambda: _state(lb, "s1", AdminState.DRAIN), 5, "s1 drained again")
        api_servers.set(1, cpu=0.95)
        await wait_for(lambda: _state(lb, "s2", AdminState.DRAIN), 5, "s2 drained")
        api_servers.set(1, cpu=0.1)
        await wait_for(lambda: _ramping(lb, "s2"), 5, "s2 ramping")
    members = await lb.members()
    s1, s2 = members["s1"].weight, members["s2"].weight
    assert s1 < 100 and s2 < 100 and members["s1"].admin is AdminState.DRAIN

    code, out, err = await cli("restore", "api/s1", "-c", str(path))
    assert code == 0, err
    assert f"weight {s1} → 100" in out and "daemon not running" in out
    code, out, err = await cli("restore", "api/s2", "-c", str(path))
    assert code == 0, err
    assert f"weight {s2} → 100" in out
    members = await lb.members()
    assert [(m.admin, m.weight) for m in (members["s1"], members["s2"])] == [
        (AdminState.READY, 100),
        (AdminState.READY, 100),
    ]
    assert not {"api/s1", "api/s2"} & {str(s) for s in Store(tmp_path / "state").load_owned()}
    weights = [
        (a["server"], a["value"], a["path"])
        for a in Store(tmp_path / "state").read_actions()
        if a["action"] == "set_weight" and a.get("path") == "direct"
    ]
    assert weights == [("api/s1", 100, "direct"), ("api/s2", 100, "direct")]
    code, out, err = await cli("audit", "-c", str(path))
    assert code == 0, out + err


async def test_restore_with_the_daemon_down_leaves_a_weight_it_did_not_set(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A weight lbhealthd did not set is left as it is, and the restore says so."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    await lb.set_state("s3", AdminState.DRAIN)
    from lbhealthd.model import ServerId

    await lb.driver.set_weight(ServerId("api", "s3"), 40)
    code, out, err = await cli("restore", "api/s3", "-c", str(path))
    assert code == 0, err
    assert "weight 40 left as it is (100 expected): not set by lbhealthd" in out
    members = await lb.members()
    assert (members["s3"].admin, members["s3"].weight) == (AdminState.READY, 40)


async def _state(lb: LBView, name: str, state: AdminState) -> bool:
    return (await lb.states())[name] is state


async def _ramping(lb: LBView, name: str) -> bool:
    m = (await lb.members())[name]
    return m.admin is AdminState.READY and m.weight < m.initial_weight
