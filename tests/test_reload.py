"""Reloading a running daemon's config against a real HAProxy: a refused reload is seen in
status, /metrics and the answer of `lbhealthd reload`; a good one says what changed."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from lbhealthd.oncall.reload import reload
from lbhealthd.status import check_problems, document, render
from tests.daemon_harness import running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle
from tests.test_oncall import cli, config_of, write_config

pytestmark = pytest.mark.integration

BAD_FALL = "pools[0].fall"
OK = "lbhealthd_config_last_reload_successful"
STAMP = "lbhealthd_config_last_reload_success_timestamp_seconds"


def _edit(path: Path, **pool: object) -> None:
    """Change pool keys of the config file in place (a value of None removes the key)."""
    doc = yaml.safe_load(path.read_text())
    for key, value in pool.items():
        if value is None:
            doc["pools"][0].pop(key, None)
        else:
            doc["pools"][0][key] = value
    path.write_text(yaml.safe_dump(doc))


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def _metric(address: str, name: str) -> float:
    """A metric as a scrape reads it (off the event loop the daemon runs on)."""
    text = await asyncio.to_thread(_read, f"http://{address}/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_refused_reload_is_seen_until_a_good_one(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A reload refused by the daemon shows in status (alert, --check exit 1), in /metrics and
    in the reload's answer (exit 1, the field path); a good reload clears all of it."""
    path = write_config(tmp_path, haproxy.socket)
    good = path.read_text()
    config = config_of(path)
    address = config.daemon.http
    async with running(config, str(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 3, 5, "first rounds")
        assert await _metric(address, OK) == 1
        loaded = await _metric(address, STAMP)
        code, out, err = await cli("status", "--check", "-c", str(path))
        assert code == 0, out + err

        # The file goes bad behind the command's back (an editor, config management): the
        # command validated a good file, the daemon reads a bad one.
        _edit(path, fall=0)
        outcome = await reload(config, str(path))
        assert outcome.code == 1
        assert outcome.lines[0].startswith("config reload refused at ")
        assert BAD_FALL in outcome.lines[0]
        assert "running the config loaded at" in outcome.lines[0]

        assert await _metric(address, OK) == 0
        health = json.loads(await asyncio.to_thread(_read, f"http://{address}/healthz"))
        assert (health["ok"], health["config_reload_ok"]) == (True, False)
        assert await _metric(address, STAMP) == loaded
        doc = document(daemon.report, daemon.wall(), daemon.mono())
        alerts = doc["daemon"]["alerts"]
        assert [a["rule"] for a in alerts] == ["config_reload"]
        assert doc["daemon"]["config"]["last_reload"]["ok"] is False
        assert any(BAD_FALL in p for p in doc["daemon"]["config"]["last_reload"]["problems"])
        assert render(doc).split("\n")[1].startswith("ALERT config_reload: config reload refused")
        assert check_problems(doc) == ["daemon: config_reload"]

        path.write_text(good)  # status needs a file it can read
        code, out, err = await cli("status", "--check", "-c", str(path))
        assert code == 1
        assert "ALERT config_reload: config reload refused at" in out
        assert BAD_FALL in out
        assert "lbhealthd status --check: daemon: config_reload" in err
        code, out, err = await cli("status", "-c", str(path))
        assert code == 0, "without --check the exit code keeps its documented meaning"
        assert "ALERT config_reload" in out

        _edit(path, fall=4)
        with capture_logs() as logs:
            code, out, err = await cli("reload", "-c", str(path))
            assert code == 0, err
            assert "config reloaded by the running daemon" in out
            assert "pools[api].fall: 3 -> 4" in out
            await wait_for(lambda: daemon.config.pools[0].fall == 4, 5, "new config in use")
        assert await _metric(address, OK) == 1
        assert await _metric(address, STAMP) > loaded
        code, out, err = await cli("status", "--check", "-c", str(path))
        assert code == 0, out + err
        assert "ALERT" not in out
    reloaded = [e for e in logs if e["event"] == "config_reloaded"]
    assert [e["changed"] for e in reloaded] == [["pools[api].fall: 3 -> 4"]]


async def test_status_with_the_refused_file_still_shows_the_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """After a SIGHUP with an invalid file, `status -c` that file warns of its problems and
    shows the running daemon's view with the refused reload; `--check` exits 1 for it."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path), str(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        _edit(path, fall=0)
        daemon.reload_requested = True  # what SIGHUP does
        await wait_for(lambda: daemon.report.config and daemon.report.config.refused, 5, "refusal")
        code, out, err = await cli("status", "-c", str(path))
        checked, _, check_err = await cli("status", "--check", "-c", str(path))
    assert code == 0, err
    assert BAD_FALL in err and "talking to the running daemon anyway" in err
    assert out.startswith("daemon: running")
    assert "ALERT config_reload: config reload refused at" in out
    assert checked == 1 and "reload" in check_err


async def test_reload_of_an_unchanged_file_says_so(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """`lbhealthd reload` of the file as loaded exits 0 and says nothing changed."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path), str(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        with capture_logs() as logs:
            code, out, err = await cli("reload", "-c", str(path))
        assert code == 0, err
        assert out.splitlines()[-1].strip() == "nothing changed"
    [event] = [e for e in logs if e["event"] == "config_reloaded"]
    assert event["changed"] == ["nothing: the file is as loaded"]


async def test_reload_refuses_an_invalid_file_without_asking_the_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """An invalid file is refused with exit 2 and its field path; the daemon hears nothing."""
    path = write_config(tmp_path, haproxy.socket)
    async with running(config_of(path), str(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        _edit(path, fall=0)
        code, _out, err = await cli("reload", "-c", str(path))
        assert code == 2
        assert BAD_FALL in err
        assert daemon.report.config is not None
        assert daemon.report.config.last_reload is None


async def test_reload_of_another_file_is_refused(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """A valid file that is not the daemon's own is refused (exit 2), nothing reloaded."""
    path = write_config(tmp_path, haproxy.socket)
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text())
    async with running(config_of(path), str(path)) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        code, _out, err = await cli("reload", "-c", str(other))
        assert code == 2
        assert f"the daemon reads {path}, not {other}" in err
        assert daemon.report.config is not None
        assert daemon.report.config.last_reload is None


async def test_reload_and_status_check_without_a_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """With no daemon, `reload` exits 1 saying so, and `status --check` exits 1."""
    path = write_config(tmp_path, haproxy.socket)
    code, out, err = await cli("reload", "-c", str(path))
    assert code == 1
    assert "no daemon answers on" in err
    code, out, err = await cli("status", "--check", "--json", "-c", str(path))
    assert code == 1
    assert json.loads(out)["daemon"]["running"] is False
    assert "lbhealthd status --check: the daemon is not running" in err
    code, out, err = await cli("status", "-c", str(path))
    assert code == 0, "without --check a stopped daemon is not an error (runbook: status)"


async def test_status_check_with_watch_is_a_usage_error(tmp_path: Path) -> None:
    """`status --check --watch` exits 2 before reading anything."""
    code, _out, err = await cli("status", "--check", "--watch", "-c", str(tmp_path / "none"))
    assert code == 2
    assert "--check and --watch" in err


async def _post_reload(socket: str, body: str) -> tuple[int, dict[str, object]]:
    import aiohttp

    connector = aiohttp.UnixConnector(path=socket)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post("http://lbhealthd/reload", data=body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_control_reload_refuses_what_it_cannot_do(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """POST /reload answers 400 to a body that is not a JSON object (or none), 409 from a daemon
    started without a file; nothing is reloaded."""
    config = config_of(write_config(tmp_path, haproxy.socket))
    socket = config.daemon.control_socket
    async with running(config) as daemon:
        await wait_for(lambda: daemon.reconciler.rounds >= 2, 5, "first rounds")
        assert (await _post_reload(socket, "[1]"))[0] == 400
        assert (await _post_reload(socket, ""))[0] == 400
        code, doc = await _post_reload(socket, "{}")
        assert code == 409
        assert "not started from a config file" in str(doc["error"])
        assert daemon.report.config is not None
        assert daemon.report.config.last_reload is None
