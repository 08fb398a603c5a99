"""On-call commands against a real HAProxy: drain, restore, status, expiry, caps, both paths."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pty
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbhealthd.drivers.haproxy.process import free_port
from lbhealthd.model import AdminState
from lbhealthd.store import Store
from tests.daemon_harness import FAST, LBView, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle

pytestmark = pytest.mark.integration


def write_config(tmp_path: Path, socket_path: str, **pool: Any) -> Path:
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "round_interval": "100ms",
            "control_socket": str(tmp_path / "run" / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
        },
        "load_balancer": {"haproxy": {"sockets": [socket_path], "timeout": "1s"}},
        "pools": [{"name": "api", **FAST, **pool}],
    }
    path = tmp_path / "lbhealthd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def cli(*args: str) -> tuple[int, str, str]:
    """Run the lbhealthd command as a separate process without blocking the event loop."""
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


def config_of(path: Path) -> Any:
    from lbhealthd.config import load_config

    return load_config(path)


async def test_drain_through_the_daemon_is_immediate_and_survives_restart(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A manual drain of a healthy server is in HAProxy within a second and survives restarts."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
        started = time.monotonic()
        code, out, err = await cli("drain", "api/s3", "-c", str(path), "--reason", "disk full")
        assert code == 0, err
        assert "via the running daemon" in out
        assert (await lb.states())["s3"] is AdminState.DRAIN
        assert time.monotonic() - started < 1.0 + 1.5  # the command's own start-up included
        for _ in range(10):  # and it stays drained although healthy
            await wait_for(lambda: daemon.reconciler.rounds >= 1, 1, "round")
        code, out, _ = await cli("status", "-c", str(path), "--json")
        doc = json.loads(out)
        s3 = next(s for s in doc["pools"][0]["servers"] if s["server"] == "api/s3")
        assert s3["lb_state"] == "drain" and s3["override"]["reason"] == "disk full"
        assert s3["override"]["who"].startswith(os.environ.get("USER", "")[:1])
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 10, 5, "rounds after restart")
        assert (await lb.states())["s3"] is AdminState.DRAIN
        code, out, err = await cli("restore", "api/s3", "-c", str(path))
        assert code == 0, err
        assert (await lb.states())["s3"] is AdminState.READY
    actions = Store(tmp_path / "state").read_actions()
    kinds = [(a["action"], a.get("value")) for a in actions if a["server"] == "api/s3"]
    assert ("override_set", None) in kinds
    assert ("set_state", "drain") in kinds and ("set_state", "ready") in kinds


async def test_drain_for_expires_and_the_daemon_restores_a_healthy_server(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """--for 2s expires; the daemon then restores the server because it is healthy."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
        asked_at = time.monotonic()  # the override starts after this, so expires 2 s after
        code, _, err = await cli(
            "drain", "api/s2", "-c", str(path), "--reason", "deploy", "--for", "2s"
        )
        assert code == 0, err
        assert (await lb.states())["s2"] is AdminState.DRAIN
        await wait_for(lambda: _state(lb, "s2", AdminState.READY), 8, "s2 restored")
        assert time.monotonic() - asked_at >= 2.0
    assert any(a["action"] == "override_expired" for a in Store(tmp_path / "state").read_actions())


async def test_manual_drain_at_the_cap_is_refused_unless_forced(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A drain beyond max_drained is refused naming the cap; --force does it anyway."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
        for name in ("s1", "s2"):
            code, _, err = await cli("drain", f"api/{name}", "-c", str(path), "--reason", "x")
            assert code == 0, err
        code, _, err = await cli("drain", "api/s3", "-c", str(path), "--reason", "x")
        assert code == 1
        assert "max_drained 40%" in err
        assert (await lb.states())["s3"] is AdminState.READY
        code, _, err = await cli("drain", "api/s3", "-c", str(path), "--reason", "x", "--force")
        assert code == 0, err
        assert (await lb.states())["s3"] is AdminState.DRAIN


async def test_unknown_server_lists_the_pool(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """An unknown server exits 2 and lists the pool's servers, with or without the daemon."""
    path = write_config(tmp_path, haproxy.socket)
    code, _, err = await cli("drain", "api/s9", "-c", str(path), "--reason", "x")
    assert code == 2 and "s1, s2, s3, s4, s5" in err
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        code, _, err = await cli("drain", "api/s9", "-c", str(path), "--reason", "x")
        assert code == 2 and "s1, s2, s3, s4, s5" in err
    code, _, err = await cli("drain", "api/s1;show info", "-c", str(path), "--reason", "x")
    assert code == 2 and "invalid server name" in err


async def test_daemon_down_path_is_honoured_on_start(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """With no daemon, drain acts on HAProxy directly; the daemon keeps it when it starts."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    code, out, err = await cli("drain", "api/s4", "-c", str(path), "--reason", "kernel update")
    assert code == 0, err
    assert "daemon not running" in out
    assert (await lb.states())["s4"] is AdminState.DRAIN
    code, out, _ = await cli("status", "-c", str(path))
    assert "NOT RUNNING" in out and "kernel update" in out
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 10, 5, "rounds")
        assert (await lb.states())["s4"] is AdminState.DRAIN
        assert daemon.reconciler.overrides
    code, out, err = await cli("restore", "api/s4", "-c", str(path))
    assert code == 0 and "daemon not running" in out, err
    assert (await lb.states())["s4"] is AdminState.READY


async def test_status_json_matches_haproxy(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """status --json reports what HAProxy reports, and why lbhealthd drained a server."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    api_servers.set(0, cpu=0.97)
    async with running(config_of(path)):
        await wait_for(lambda: _state(lb, "s1", AdminState.DRAIN), 5, "s1 drained")
        code, out, err = await cli("status", "-c", str(path), "--json")
        assert code == 0, err
        doc = json.loads(out)
        members = await lb.members()
        pool = doc["pools"][0]
        assert pool["size"] == 5 and pool["out"] == 1 and pool["max_out"] == 2
        for s in pool["servers"]:
            m = members[s["server"].split("/")[1]]
            assert (s["lb_state"], s["weight"]) == (m.admin.value, m.weight)
        s1 = pool["servers"][0]
        assert s1["owner"] == "lbhealthd" and s1["last_decision"]["rule"] == "fall"
        assert s1["probe"]["signals"]["cpu"] == pytest.approx(0.97)
        code, out, _ = await cli("status", "-c", str(path))
        assert "daemon: running" in out and "fall:" in out


async def test_status_watch_redraws_until_ctrl_c(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """status --watch prints a new table every interval (blank-line separated on a pipe, no
    screen clearing) and ends with exit 0 and no traceback on SIGINT."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 1, 5, "first round")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "lbhealthd", "status", "-c", str(path)),
            *("--watch", "--interval", "0.2s"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            lines: list[str] = []
            deadline = time.monotonic() + 15
            while sum(1 for x in lines if x.startswith("daemon: running")) < 3:
                left = deadline - time.monotonic()
                line = await asyncio.wait_for(proc.stdout.readline(), max(left, 0.01))
                assert line, "status --watch ended before its third table"
                lines.append(line.decode())
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    text = "".join(lines) + out.decode()
    assert "\x1b" not in text
    first, second = text.split("daemon: running")[1:3]
    assert first.endswith("\n\n") and "  s1 " in first and "  s5 " in second


async def test_status_watch_through_a_broken_file_warns_once(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """status --watch with a config file broken on disk shows the running daemon's tables and
    says what is wrong with the file once, not with every table."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 1, 5, "first round")
        path.write_text(path.read_text().replace("fall: 3", "fall: 0"))
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "lbhealthd", "status", "-c", str(path)),
            *("--watch", "--interval", "0.2s"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            tables = 0
            deadline = time.monotonic() + 15
            while tables < 3:
                left = deadline - time.monotonic()
                line = await asyncio.wait_for(proc.stdout.readline(), max(left, 0.01))
                assert line, "status --watch ended before its third table"
                tables += line.startswith(b"daemon: running")
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    warnings = [ln for ln in err.decode().splitlines() if ln.startswith("warning: config")]
    assert len(warnings) == 1, err.decode()
    assert "fall" in warnings[0] and "talking to the running daemon anyway" in warnings[0]


async def test_status_watch_redraws_in_place_on_a_terminal(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """On a terminal, status --watch clears the screen before each table, under a line with
    the interval, and Ctrl-C still ends it with exit 0."""
    path = write_config(tmp_path, haproxy.socket)
    master, terminal = pty.openpty()
    async with running(config_of(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 1, 5, "first round")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "lbhealthd", "status", "-c", str(path)),
            *("--watch", "--interval", "0.2s"),
            stdout=terminal,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(terminal)
        try:
            seen = b""
            deadline = time.monotonic() + 15
            while seen.count(b"\x1b[H\x1b[2J") < 3:  # the second table is whole
                left = deadline - time.monotonic()
                assert left > 0, f"no second table within 15s: {seen[-400:]!r}"
                ready, _, _ = await asyncio.to_thread(select.select, [master], [], [], left)
                if ready:
                    seen += os.read(master, 65536)
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    second = seen.split(b"\x1b[H\x1b[2J")[2].decode()
    assert second.startswith("every 0.2s, Ctrl-C to stop: ") and "daemon: running" in second


def _connect_as_nobody(path: str, queue: Any) -> None:
    os.setgid(65534)
    os.setuid(65534)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(b"POST /drain HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        queue.put(s.recv(200).decode(errors="replace"))
    except OSError as exc:
        queue.put(type(exc).__name__)
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_other_users_are_refused(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """The socket is 0660: another user cannot connect; with looser modes the daemon refuses."""
    # A directory every user may traverse, so that only the socket's own mode decides.
    open_dir = Path(tempfile.mkdtemp(prefix="lbhealthd-test-"))
    os.chmod(open_dir, 0o755)
    sock = str(open_dir / "run" / "control.sock")
    path = write_config(tmp_path, haproxy.socket)
    doc = yaml.safe_load(path.read_text())
    doc["daemon"]["control_socket"] = sock
    path.write_text(yaml.safe_dump(doc))
    ctx = multiprocessing.get_context("fork")
    try:
        await _refusals(config_of(path), sock, open_dir, ctx)
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


async def _refusals(config: Any, sock: str, open_dir: Path, ctx: Any) -> None:
    async with running(config) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        assert os.stat(sock).st_mode & 0o777 == 0o660
        os.chmod(open_dir / "run", 0o755)
        for mode, expected in ((0o660, "PermissionError"), (0o666, "403")):
            os.chmod(sock, mode)  # 0666 is an operator's mistake: the daemon still says no
            queue = ctx.Queue()
            child = ctx.Process(target=_connect_as_nobody, args=(sock, queue))
            child.start()
            got = await asyncio.to_thread(queue.get, True, 10)
            await asyncio.to_thread(child.join, 10)
            assert expected in got


async def _state(lb: LBView, name: str, state: AdminState) -> bool:
    return (await lb.states())[name] is state
