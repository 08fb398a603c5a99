"""The command line: subcommands, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lbhealthd.cli import main

ROOT = Path(__file__).resolve().parent.parent


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
    """Without -c nor LBHEALTHD_CONFIG the command exits 2 and says what is missing."""
    monkeypatch.delenv("LBHEALTHD_CONFIG", raising=False)
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
