"""The core installs and runs without its extras: importing the package, `--help`,
`check-config` and `run` with an HAProxy pool need none of them, and a command that does need
one (the demo, an ELBv2 pool, uvloop asked for by name) exits 2 with one line naming it.

Each test runs the CLI in a child process whose PYTHONPATH starts with a directory of stand-in
modules that raise ImportError, as an uninstalled module would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lbhealthd.errors import MissingExtra
from lbhealthd.extras import EXTRAS, installed, require
from tests.daemon_harness import FAST, wait_for
from tests.fixtures_haproxy import HAProxyHandle, free_port

ROOT = Path(__file__).resolve().parent.parent
EVERY_EXTRA = tuple(m for modules in EXTRAS.values() for m in modules)


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A directory of stand-ins for every extra's modules; each raises ImportError."""
    folder = tmp_path / "blocked"
    folder.mkdir()
    for module in EVERY_EXTRA:
        (folder / f"{module}.py").write_text(f"raise ImportError('{module} is not installed')\n")
    return folder


def _env(blocked: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(blocked), "PYTHONUNBUFFERED": "1"}


def _cli(blocked: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbhealthd", *args],
        env=_env(blocked),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _config(
    tmp_path: Path, lb: dict[str, object], name: str = "lbhealthd", **daemon: object
) -> Path:
    path = tmp_path / f"{name}.yaml"
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "control_socket": str(tmp_path / "run" / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            "round_interval": "100ms",
            **daemon,
        },
        "load_balancer": lb,
        "pools": [{"name": "api", **FAST}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


ELBV2 = {"type": "aws_elbv2", "aws_elbv2": {"region": "eu-west-1"}}


def test_require_names_the_extra_and_passes_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``require`` passes for an importable module and raises MissingExtra naming the extra."""
    assert installed("json")
    assert not installed("lbhealthd_no_such_module")
    require("demo", "lbhealthd demo")  # matplotlib comes with the test extra
    monkeypatch.setitem(EXTRAS, "missing-for-test", ("lbhealthd_no_such_module",))
    with pytest.raises(MissingExtra) as caught:
        require("missing-for-test", "something")
    assert str(caught.value) == (
        "something needs lbhealthd_no_such_module: pip install 'lbhealthd[missing-for-test]'"
    )


def test_the_test_extra_holds_the_demo_and_aws_extras() -> None:
    """Every requirement of the demo and aws extras is in the test extra (which repeats them),
    and every extra of pyproject.toml is one ``require`` knows, or the test one."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras["demo"]) | set(extras["aws"]) <= set(extras["test"])
    assert set(extras) == set(EXTRAS) | {"test"}


def test_the_stand_ins_do_block(blocked: Path, tmp_path: Path) -> None:
    """In the child, every extra's module fails to import (so the tests below can fail)."""
    script = (
        "from lbhealthd.extras import installed, EXTRAS; print(sorted(m for ms in "
        "EXTRAS.values() for m in ms if installed(m)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(blocked),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_core_commands_work_without_any_extra(blocked: Path, tmp_path: Path) -> None:
    """Without matplotlib, aiobotocore, botocore or uvloop: the package and its CLI import,
    none of those is imported, `--help` works, and `check-config` accepts the example config
    and an ELBv2 config (checking a file needs no driver)."""
    script = (
        "import sys, json, lbhealthd, lbhealthd.cli, lbhealthd.demo, lbhealthd.daemon.loop, "
        "lbhealthd.drivers, lbhealthd.oncall.audit; "
        f"print(json.dumps(sorted(m for m in {list(EVERY_EXTRA)!r} if m in sys.modules)))"
    )
    # Blocked, the imports succeed; with the extras installed (the test extra has demo and
    # aws), none of their modules is imported either: they are imported where they are used.
    for env in (_env(blocked), {**os.environ}):
        imported = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == []

    helped = _cli(blocked, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "check-config" in helped.stdout

    example = _cli(blocked, "check-config", "-c", str(ROOT / "config.example.yaml"), cwd=tmp_path)
    assert example.returncode == 0, example.stderr
    assert ": OK: haproxy" in example.stdout

    elbv2 = _cli(blocked, "check-config", "-c", str(_config(tmp_path, ELBV2)), cwd=tmp_path)
    assert elbv2.returncode == 0, elbv2.stderr
    assert ": OK: aws_elbv2" in elbv2.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--short"], "lbhealthd demo needs matplotlib: pip install 'lbhealthd[demo]'"),
        (
            ["run", "-c", "{elbv2}"],
            "load_balancer.type aws_elbv2 needs aiobotocore: pip install 'lbhealthd[aws]'",
        ),
        (
            ["status", "-c", "{elbv2}"],
            "load_balancer.type aws_elbv2 needs aiobotocore: pip install 'lbhealthd[aws]'",
        ),
        (
            ["drain", "api/i-0abc", "--reason", "test", "-c", "{elbv2}"],
            "load_balancer.type aws_elbv2 needs aiobotocore: pip install 'lbhealthd[aws]'",
        ),
        (
            ["restore", "api/i-0abc", "-c", "{elbv2}"],
            "load_balancer.type aws_elbv2 needs aiobotocore: pip install 'lbhealthd[aws]'",
        ),
        (
            ["audit", "-c", "{elbv2}"],
            "load_balancer.type aws_elbv2 needs aiobotocore: pip install 'lbhealthd[aws]'",
        ),
        (
            ["run", "-c", "{uvloop}"],
            "daemon.event_loop uvloop needs uvloop: pip install 'lbhealthd[fast]'",
        ),
    ],
    ids=[
        "demo",
        "run-elbv2",
        "status-elbv2",
        "drain-elbv2",
        "restore-elbv2",
        "audit-elbv2",
        "run-uvloop",
    ],
)
def test_a_command_that_needs_a_missing_extra_says_which_and_exits_2(
    blocked: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """The command prints one line naming the extra to install, and exits 2 (usage/config)."""
    paths = {
        "elbv2": str(_config(tmp_path, ELBV2)),
        "uvloop": str(
            _config(
                tmp_path,
                {"haproxy": {"sockets": ["unix:/nonexistent.sock"]}},
                "uvloop",
                event_loop="uvloop",
            )
        ),
    }
    done = _cli(blocked, *[a.format(**paths) for a in args], cwd=tmp_path)
    assert (done.returncode, done.stderr.strip().splitlines()[-1:]) == (2, [message])
    assert "Traceback" not in done.stderr


def test_python_m_demo_says_the_same(blocked: Path, tmp_path: Path) -> None:
    """`python -m lbhealthd.demo` without matplotlib: the same line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "lbhealthd.demo", "--short"],
        env=_env(blocked),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "lbhealthd demo needs matplotlib: pip install 'lbhealthd[demo]'"


@pytest.mark.integration
async def test_run_with_an_haproxy_pool_needs_no_extra(
    blocked: Path, tmp_path: Path, haproxy: HAProxyHandle
) -> None:
    """`lbhealthd run` drives a real HAProxy with no extra installed (`status` reads its
    servers); ``event_loop: auto`` falls back to the standard loop; SIGTERM stops it with 0."""
    config = _config(tmp_path, {"haproxy": {"sockets": [haproxy.socket]}}, event_loop="auto")
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbhealthd", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(blocked),
            cwd=tmp_path,
        )
    try:
        await wait_for(
            lambda: b'"event": "started"' in log.read_bytes() or proc.poll() is not None,
            15,
            "started",
        )
        assert proc.poll() is None, log.read_text()
        status = _cli(blocked, "status", "--json", "-c", str(config), cwd=tmp_path)
        document = json.loads(status.stdout)  # exit 1: the servers' probes fail, a finding
        assert document["daemon"]["running"] is True, document
        assert {s["server"] for s in document["pools"][0]["servers"]} >= {"api/s1", "api/s2"}
        proc.send_signal(signal.SIGTERM)
        code = await wait_for(lambda: proc.poll() is not None and (proc.returncode,), 10, "exit")
        assert code == (0,), log.read_text()
        assert b"Traceback" not in log.read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
