"""A server renamed in a real HAProxy, in a pool without `servers:` in the config: the audit
(live and of the file) reports the rename against the set recorded at the first read;
`lbhealthd forget` drops what lbhealthd remembers of the old name and `audit --accept` records
the live set; through the running daemon, or on state_dir when it is down."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbhealthd.cli import main
from lbhealthd.drivers.haproxy.process import ServerSpec, wait_exit
from lbhealthd.model import ServerId
from lbhealthd.oncall import audit as audit_cli
from lbhealthd.oncall import commands as oncall
from lbhealthd.store import Store
from tests.daemon_harness import FAST, make_config, running, wait_for
from tests.fixtures_haproxy import (
    ApiServers,
    HAProxyFactory,
    HAProxyHandle,
    api_backend,
    free_port,
)

pytestmark = pytest.mark.integration

S3 = ServerId("api", "s3")


def _write_config(tmp_path: Path, socket: str) -> Path:
    """The config make_config builds, as a file for the command line."""
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "round_interval": "100ms",
            "control_socket": str(tmp_path / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
        },
        "load_balancer": {"type": "haproxy", "haproxy": {"sockets": [socket], "timeout": "1s"}},
        "pools": [{"name": "api", **FAST}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`lbhealthd ARGV` in a thread of its own (it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _rename_s3(haproxy: HAProxyHandle, api_servers: ApiServers) -> str:
    """s3 becomes s3b at the same address: the file is rewritten and HAProxy reloaded."""
    specs = api_backend(api_servers)
    s3 = specs[2]
    specs[2] = ServerSpec("s3b", s3.host, s3.port, s3.weight, s3.extra)
    haproxy.proc.backends = {"api": specs}
    old = await haproxy.proc.reload()
    assert await wait_exit(old, 5.0)
    return f"{s3.host}:{s3.port}"


def _recorded(state: Path) -> list[str]:
    return list((Store(state).load_blob("discovered") or {}).get("pools", {}).get("api", []))


def _actions(state: Path, action: str) -> list[dict[str, Any]]:
    return [a for a in Store(state).read_actions() if a.get("action") == action]


async def test_a_renamed_server_with_the_daemon_down(
    api_servers: ApiServers,
    haproxy_factory: HAProxyFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Daemon down: the live audit and the file's audit name the rename (same address) and
    exit 1; forget refuses the new name (listed) and drops the old one's override, ownership
    and place in the recorded set; accept records the live set; the audit is then clean."""
    haproxy = await haproxy_factory({"api": api_backend(api_servers)})
    config = make_config([haproxy.socket], tmp_path / "state")
    path = _write_config(tmp_path, haproxy.socket)
    state = tmp_path / "state"
    async with running(config) as daemon:
        await wait_for(lambda: _recorded(state), 5, "the recorded set")
        drained = await oncall.drain(config, S3, "disk", None, False, False)
        assert drained.code == 0, drained.lines
        await wait_for(lambda: S3 in Store(state).load_owned(), 5, "s3 owned")
        assert daemon.reconciler.rounds > 0
    assert _recorded(state) == ["s1", "s2", "s3", "s4", "s5"]
    address = await _rename_s3(haproxy, api_servers)

    code, out, _ = await _cli(capsys, "audit", "-c", str(path))
    assert code == 1
    assert f"  renamed             api/s3 -> api/s3b (same address {address})" in out
    assert "lbhealthd audit --accept api" in out
    code, out, _ = await _cli(
        capsys, "audit", "-c", str(path), "--haproxy-cfg", str(haproxy.proc.config_path)
    )
    assert code == 1
    assert f"  compared with api: the set recorded in {state}" in out
    assert f"api/s3 -> api/s3b (same address {address})" in out

    code, _, err = await _cli(capsys, "forget", "api/s3b", "-c", str(path), "--reason", "x")
    assert code == 1
    assert "still lists api/s3b" in err
    code, out, _ = await _cli(
        capsys, "forget", "api/s3", "-c", str(path), "--reason", "renamed to s3b"
    )
    assert code == 0, out
    assert "override" in out and "owned.json" in out and "recorded server set" in out
    assert "daemon not running" in out
    store = Store(state)
    assert S3 not in store.load_owned() and S3 not in store.load_overrides()
    assert "api/s3" not in (store.load_blob("engine") or {}).get("servers", {})
    assert _recorded(state) == ["s1", "s2", "s4", "s5"]
    [forgot] = _actions(state, "server_forgotten")
    assert (forgot["server"], forgot["reason"], forgot["path"]) == (
        "api/s3",
        "renamed to s3b",
        "direct",
    )
    assert "cli" in forgot["who"]

    code, out, _ = await _cli(capsys, "audit", "-c", str(path), "--accept", "api", "--reason", "r")
    assert code == 0, out
    assert "api expects s1, s2, s3b, s4, s5 from now on (was: s1, s2, s4, s5)" in out
    assert _recorded(state) == ["s1", "s2", "s3b", "s4", "s5"]
    [accepted] = _actions(state, "servers_accepted")
    assert accepted["before"] == ["s1", "s2", "s4", "s5"] and accepted["reason"] == "r"
    code, out, _ = await _cli(capsys, "audit", "-c", str(path))
    assert (code, out.strip()) == (0, "live pool: clean")


async def test_a_renamed_server_through_the_running_daemon(
    api_servers: ApiServers,
    haproxy_factory: HAProxyFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Daemon running: forget and accept go through its control socket and change its own
    memory (and state_dir with it); a listed server is refused unless --force."""
    haproxy = await haproxy_factory({"api": api_backend(api_servers)})
    config = make_config([haproxy.socket], tmp_path / "state")
    path = _write_config(tmp_path, haproxy.socket)
    state = tmp_path / "state"
    async with running(config) as daemon:
        r = daemon.reconciler
        await wait_for(lambda: r.reader.discovered.get("api"), 5, "the recorded set")
        assert (await oncall.drain(config, S3, "disk", None, False, False)).code == 0
        await wait_for(lambda: S3 in r.writer.owned, 5, "s3 owned")
        await _rename_s3(haproxy, api_servers)
        await wait_for(lambda: "s3b" in {s.server for s in r.reader.members["api"]}, 5, "s3b")

        code, out, _ = await _cli(capsys, "forget", "api/s3", "-c", str(path), "--reason", "gone")
        assert code == 0, out
        assert "(via the running daemon)" in out and "override" in out
        assert S3 not in r.writer.owned and S3 not in r.overrides
        assert S3 not in r.state.servers and S3 not in r.state.absent
        assert "s3" not in r.reader.discovered["api"]
        await wait_for(lambda: S3 not in Store(state).load_owned(), 5, "owned.json written")
        await wait_for(lambda: "s3" not in _recorded(state), 5, "discovered written")
        [forgot] = _actions(state, "server_forgotten")
        assert forgot["path"] == "daemon" and forgot["reason"] == "gone"

        code, _, err = await _cli(capsys, "forget", "api/s4", "-c", str(path), "--reason", "x")
        assert code == 1 and "still lists api/s4" in err
        code, out, _ = await _cli(
            capsys, "forget", "api/s4", "-c", str(path), "--reason", "x", "--force"
        )
        assert code == 0, out

        code, out, _ = await _cli(capsys, "audit", "-c", str(path), "--accept", "api")
        assert code == 0, out
        assert "api expects s1, s2, s3b, s4, s5 from now on" in out
        assert r.reader.discovered["api"] == ["s1", "s2", "s3b", "s4", "s5"]
        await wait_for(lambda: "s3b" in _recorded(state), 5, "discovered written")
        await wait_for(lambda: not r.report.pool("api").findings, 5, "the daemon's audit clean")


async def test_a_file_is_compared_with_the_live_pool_when_nothing_is_recorded(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """No `servers:` and no recorded set: a candidate file is compared with the servers the
    LB lists now, and a server renamed in the file is named as such."""
    haproxy = await haproxy_factory({"api": api_backend(api_servers)})
    config = make_config([haproxy.socket], tmp_path / "state")
    specs = api_backend(api_servers)
    s3 = specs[2]
    specs[2] = ServerSpec("s3b", s3.host, s3.port, s3.weight, s3.extra)
    haproxy.proc.backends = {"api": specs}
    path = tmp_path / "candidate.cfg"
    path.write_text(haproxy.proc.config_text())
    outcome = audit_cli.candidate(config, str(path))
    assert outcome.code == 1, outcome.lines
    assert "  compared with api: the servers the load balancer lists now" in outcome.lines
    assert f"  renamed             api/s3 -> api/s3b (same address {s3.host}:{s3.port})" in (
        outcome.lines
    )
    assert outcome.document is not None
    assert outcome.document["renamed"] == [
        {"pool": "api", "old": "s3", "new": "s3b", "address": f"{s3.host}:{s3.port}", "sure": True}
    ]


async def test_a_set_recorded_without_addresses_gives_a_likely_rename(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory, tmp_path: Path
) -> None:
    """A set recorded before addresses were kept: one server gone and one new are named as a
    likely rename, said to be a guess."""
    haproxy = await haproxy_factory({"api": api_backend(api_servers)})
    config = make_config([haproxy.socket], tmp_path / "state")
    Store(tmp_path / "state").save_blob(
        "discovered", {"pools": {"api": ["s1", "s2", "s4", "s5", "s6"]}}
    )
    outcome = await audit_cli.live(config, fix=False, yes=False, confirm=lambda _: False)
    assert outcome.code == 1
    [line] = [x for x in outcome.lines if x.startswith("  renamed?")]
    assert "api/s6 -> api/s3" in line and "old address is not known" in line
