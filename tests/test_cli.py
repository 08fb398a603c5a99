"""The command line: subcommands, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lbhealthd.cli import main
from lbhealthd.drivers.memory import MemoryDriver
from lbhealthd.oncall import direct
from lbhealthd.store import Store
from lbhealthd.testing import memory_pool
from tests.daemon_harness import FAST

ROOT = Path(__file__).resolve().parent.parent
SOCKET = "unix:/nonexistent/haproxy.sock"  # the driver is injected: never opened


def test_check_config_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example config passes check-config with exit 0."""
    assert main(["check-config", "-c", str(ROOT / "config.example.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_names_every_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config exits 2 naming both bad fields with their lines."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pools:\n  - name: api\n    fall: 0\n    probe: {load_fields: {cpu: cpu}}\n"
        "    overload:\n      cpu: {high: 0.5, low: 0.7}\n"
    )
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: pools[0].fall: must be >= 1 (got 0) (line 3)" in err
    assert f"{bad}: pools[0].overload.cpu: low (0.7) must be < high (0.5) (line 6)" in err


def test_config_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """-c may be left out when LBHEALTHD_CONFIG names the file."""
    monkeypatch.setenv("LBHEALTHD_CONFIG", str(ROOT / "config.example.yaml"))
    assert main(["check-config"]) == 0


def test_no_config_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -c nor LBHEALTHD_CONFIG, and no file at the default path, the command exits 2
    and says what is missing."""
    monkeypatch.delenv("LBHEALTHD_CONFIG", raising=False)
    monkeypatch.setattr("lbhealthd.config.loading.DEFAULT_PATH", "/nonexistent/config.yaml")
    assert main(["check-config"]) == 2
    assert "LBHEALTHD_CONFIG" in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config path that does not exist exits 2 naming it."""
    assert main(["check-config", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error() -> None:
    """An unknown subcommand exits 2."""
    assert main(["frobnicate"]) == 2


def test_python_dash_m_and_console_script_agree() -> None:
    """`python -m lbhealthd` runs the same command line."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lbhealthd",
            "check-config",
            "-c",
            str(ROOT / "config.example.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_agent_keeps_its_drain_flag_which_no_longer_drains(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`agent --drain-at` and `--min-weight` are still accepted; the help says the agent never
    replies drain."""
    from lbhealthd.cli import build_parser

    args = build_parser().parse_args(["agent", "--drain-at", "0.9", "--min-weight", "20"])
    assert (args.drain_at, args.min_weight) == (0.9, 20)
    assert main(["agent", "--help"]) == 0
    assert "never replies drain" in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def daemon_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, MemoryDriver]:
    """A config file whose daemon is not running and whose LB is an in-memory pool."""
    driver = memory_pool("api", 5)
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: driver)
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "control_socket": str(tmp_path / "run" / "control.sock"),
        },
        "load_balancer": {"haproxy": {"sockets": [SOCKET]}},
        "pools": [{"name": "api", **FAST}],
    }
    path = tmp_path / "lbhealthd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, driver


@pytest.mark.parametrize("command", ["drain", "restore"])
@pytest.mark.parametrize("duration", ["99999999999999d", "366d", "31536001s"])
def test_for_beyond_the_maximum_is_refused_before_anything_is_recorded(
    daemon_down: tuple[Path, MemoryDriver],
    capsys: pytest.CaptureFixture[str],
    command: str,
    duration: str,
) -> None:
    """`--for` above 365d exits 2 naming the maximum; nothing is recorded, the LB untouched."""
    path, driver = daemon_down
    reason = ["--reason", "x"] if command == "drain" else []
    assert main([command, "api/s1", "-c", str(path), *reason, "--for", duration]) == 2
    err = capsys.readouterr().err
    assert "--for" in err and "365d" in err and "Traceback" not in err
    assert Store(path.parent / "state").load_overrides() == {}
    assert driver.sent() == []


def test_for_at_the_maximum_is_accepted(
    daemon_down: tuple[Path, MemoryDriver], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--for 365d` drains with that expiry, and says until when."""
    path, driver = daemon_down
    assert main(["drain", "api/s1", "-c", str(path), "--reason", "x", "--for", "365d"]) == 0
    assert "until 20" in capsys.readouterr().out
    (override,) = Store(path.parent / "state").load_overrides().values()
    assert override.expires_at is not None
    assert override.expires_at - override.created_at == 365 * 86400
    assert driver.sent() == [("s1", "drain")]


@pytest.mark.parametrize(
    "args",
    [["--interval", "2s"], ["--watch", "--interval", "0s"], ["--watch", "--interval", "soon"]],
    ids=["interval-without-watch", "zero-interval", "not-a-duration"],
)
def test_status_watch_options_are_checked(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --interval` needs --watch and a positive duration; else a usage error, exit 2."""
    assert main(["status", "-c", str(tmp_path / "none.yaml"), *args]) == 2
    assert "--interval" in capsys.readouterr().err
