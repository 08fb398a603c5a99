"""The on-call commands with a config file broken on disk: a running daemon (which refused the
file on reload) is still reached, with a warning; without a daemon nothing is changed, and the
command says why and how to do it by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lbhealthd.config import load_config
from lbhealthd.config.lenient import Broken
from lbhealthd.daemon.loop import Daemon
from lbhealthd.errors import ConfigError
from lbhealthd.model import AdminState
from lbhealthd.oncall import commands as oncall
from lbhealthd.store import Store
from tests.daemon_harness import LBView, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle
from tests.test_oncall import cli, write_config

BAD_YAML = "pools: [\n  - name: api\n"  # does not parse


def _broken(path: Path) -> Broken:
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return Broken.of(refused.value, str(path))


def test_a_file_that_does_not_parse_reaches_the_default_socket(tmp_path: Path) -> None:
    """YAML that does not parse names no socket: the default path is tried, and said to be."""
    path = tmp_path / "c.yaml"
    path.write_text(BAD_YAML)
    broken = _broken(path)
    assert broken.reach.control_socket == "/run/lbhealthd/control.sock"
    assert broken.reach.state_dir == "/var/lib/lbhealthd"
    assert not broken.reach.from_file
    assert "(yaml)" in broken.problem and str(path) in broken.warning
    said = oncall._no_daemon(broken, "drain", "set server api/s1 state drain")
    assert said.code == 2
    assert (
        "nothing answers on /run/lbhealthd/control.sock, the default: give --socket"
        in (said.lines[0])
    )
    assert "socat stdio unix-connect:HAPROXY_ADMIN_SOCKET" in said.lines[0]
    given = broken.at("/tmp/x/control.sock")
    assert given.reach.control_socket == "/tmp/x/control.sock" and given.reach.from_file


def test_a_file_that_parses_but_does_not_validate_gives_its_socket(tmp_path: Path) -> None:
    """A file refused by the schema still gives the daemon's socket, state_dir and the HAProxy
    sockets; a key given twice or of the wrong kind is not guessed at."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "daemon: {control_socket: /tmp/x/control.sock, state_dir: /tmp/x/state, bogus: 1}\n"
        "load_balancer: {haproxy: {sockets: ['unix:/tmp/h.sock', 'tcp:127.0.0.1:9999', 7]}}\n"
        "pools: [{name: api, fall: 0}]\n"
    )
    broken = _broken(path)
    assert broken.reach.control_socket == "/tmp/x/control.sock" and broken.reach.from_file
    assert broken.reach.state_dir == "/tmp/x/state"
    assert broken.reach.haproxy_sockets == ("unix:/tmp/h.sock", "tcp:127.0.0.1:9999")
    assert "more problem(s)" in broken.problem
    path.write_text("daemon: {control_socket: [1], state_dir: /a}\ndaemon: {state_dir: /b}\n")
    broken = _broken(path)
    assert broken.reach.control_socket == "/run/lbhealthd/control.sock"
    assert broken.reach.state_dir == "/var/lib/lbhealthd"


@asynccontextmanager
async def _daemon(path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(path), str(path))
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stopping.set()
        await asyncio.wait_for(task, timeout=5)


@pytest.mark.integration
async def test_a_broken_file_does_not_lock_on_call_out_of_a_running_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """After a reload refused for YAML that does not parse, status, drain and restore go
    through the running daemon (its socket given with --socket) with a warning naming the
    problem; once it stops, they change nothing, exit 2 and say how to do it by hand."""
    path = write_config(tmp_path, haproxy.socket)
    sock = load_config(path).daemon.control_socket
    lb = LBView(haproxy.socket)
    async with _daemon(path) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        path.write_text(BAD_YAML)
        daemon.reload_requested = True  # what SIGHUP does
        rounds = daemon.reconciler.rounds
        await wait_for(
            lambda: not daemon.reload_requested and daemon.reconciler.rounds > rounds + 1,
            5,
            "the reload refused",
        )
        assert daemon.config.pools[0].fall == 3  # the config it accepted last
        warning = f"warning: config {path} is invalid ((yaml)"
        code, out, err = await cli("status", "-c", str(path), "--socket", sock)
        assert code == 0, err
        assert out.startswith("daemon: running") and warning in err
        assert "talking to the running daemon anyway" in err
        code, out, err = await cli(
            "drain", "api/s2", "-c", str(path), "--socket", sock, "--reason", "disk"
        )
        assert code == 0 and "via the running daemon" in out and warning in err, err
        assert (await lb.states())["s2"] is AdminState.DRAIN
        code, out, err = await cli("restore", "api/s2", "-c", str(path), "--socket", sock)
        assert code == 0 and "via the running daemon" in out and warning in err, err
        assert (await lb.states())["s2"] is AdminState.READY
    store = Store(tmp_path / "state")
    before, held = store.read_actions(), store.load_overrides()
    code, out, err = await cli(
        "drain", "api/s3", "-c", str(path), "--socket", sock, "--reason", "disk"
    )
    assert code == 2 and not out
    assert f"drain: the daemon is not running (nothing answers on {sock})" in err
    assert f"and {path} is invalid ((yaml)" in err and "nothing was changed; fix the file" in err
    hand = "echo 'set server api/s3 state drain' | socat stdio unix-connect:HAPROXY_ADMIN_SOCKET"
    assert hand in err
    assert "talking to the running daemon" not in err
    assert (await lb.states())["s3"] is AdminState.READY
    code, _, err = await cli("restore", "api/s2", "-c", str(path), "--socket", sock)
    assert code == 2 and "echo 'set server api/s2 state ready'" in err
    code, out, err = await cli("status", "-c", str(path), "--socket", sock)
    assert code == 2 and "nothing was read" in err and "show servers state" in err
    assert store.read_actions() == before and store.load_overrides() == held


@pytest.mark.integration
async def test_a_file_refused_by_the_schema_still_names_the_daemons_socket(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A file that parses but is refused (a bad value) still names the control socket the
    daemon listens on, and HAProxy's: the commands reach the daemon there without --socket,
    and without it say which HAProxy socket to use by hand."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with _daemon(path) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        path.write_text(path.read_text().replace("fall: 3", "fall: 0"))
        code, out, err = await cli("drain", "api/s4", "-c", str(path), "--reason", "disk")
        assert code == 0 and "via the running daemon" in out, err
        assert "pools[0].fall" in err and "talking to the running daemon anyway" in err
        assert (await lb.states())["s4"] is AdminState.DRAIN
    code, out, err = await cli("restore", "api/s4", "-c", str(path))
    assert code == 2 and "pools[0].fall" in err
    socket_path = haproxy.socket.removeprefix("unix:")
    assert f"echo 'set server api/s4 state ready' | socat stdio unix-connect:{socket_path}" in err
    assert (await lb.states())["s4"] is AdminState.DRAIN


def test_a_config_path_that_does_not_exist_is_still_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No file at the path given is a wrong path, not a file broken on disk: the command
    refuses it (exit 2) before reaching any daemon, while a file that is there but broken
    is reached past (here with no daemon: exit 2 naming the daemon)."""
    from lbhealthd.cli import main

    missing = tmp_path / "nope.yaml"
    assert main(["status", "-c", str(missing), "--socket", str(tmp_path / "none.sock")]) == 2
    err = capsys.readouterr().err
    assert "config refused" in err and "daemon" not in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(BAD_YAML)
    assert main(["status", "-c", str(broken), "--socket", str(tmp_path / "none.sock")]) == 2
    err = capsys.readouterr().err
    assert "status: the daemon is not running" in err and "config refused" not in err
