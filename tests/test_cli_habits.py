"""The command line's habits: the default config path, shell completion generated from the
parser, and the help topics shipped in the package."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from lbhealthd.cli import build_parser, main
from lbhealthd.cli.habits import TOPICS, topics, walk
from lbhealthd.config import loading

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"


# --- the default config path ---------------------------------------------------------------


@pytest.fixture
def default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default config path moved into a temporary directory, with no $LBHEALTHD_CONFIG."""
    path = tmp_path / "etc" / "config.yaml"
    monkeypatch.setattr(loading, "DEFAULT_PATH", str(path))
    monkeypatch.delenv("LBHEALTHD_CONFIG", raising=False)
    return path


def test_the_default_path_is_the_units() -> None:
    """The default is the path the systemd unit passes with -c."""
    unit = (ROOT / "systemd" / "lbhealthd.service").read_text()
    assert f"-c {loading.DEFAULT_PATH}\n" in unit


def test_without_c_the_default_file_is_used(
    default_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With neither -c nor $LBHEALTHD_CONFIG, the file at the default path is checked."""
    default_path.parent.mkdir()
    default_path.write_text(EXAMPLE.read_text())
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{default_path}: OK")


def test_a_missing_default_says_where_and_how(
    default_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing default file exits 2 naming the path, -c and $LBHEALTHD_CONFIG."""
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert str(default_path) in err
    assert "-c FILE" in err and "$LBHEALTHD_CONFIG" in err


def test_the_environment_and_c_win_over_the_default(
    default_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$LBHEALTHD_CONFIG wins over the default, and -c over both."""
    default_path.parent.mkdir()
    default_path.write_text("not: [valid")
    monkeypatch.setenv("LBHEALTHD_CONFIG", str(EXAMPLE))
    assert main(["check-config"]) == 0
    monkeypatch.setenv("LBHEALTHD_CONFIG", str(default_path))
    assert main(["check-config"]) == 2
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0


def test_a_missing_named_file_says_how_to_give_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A -c file that does not exist is named, with how to give another."""
    assert main(["check-config", "-c", str(tmp_path / "gone.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone.yaml'}: (file): cannot read: no such file" in err
    assert "-c FILE or $LBHEALTHD_CONFIG" in err


# --- completion ------------------------------------------------------------------------------


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def test_every_subcommand_is_walked() -> None:
    """The walk finds every subcommand of the parser with its options."""
    commands = {c.name: c for c in walk(build_parser())}
    assert {"run", "drain", "restore", "status", "audit", "completion", "help"} <= set(commands)
    drain = {n for o in commands["drain"].options for n in o.names}
    assert {"--reason", "--for", "--force", "-c", "--config"} <= drain


def test_the_bash_script_parses_and_names_every_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bash -n` accepts the script, and it names every subcommand."""
    script = _script("bash", capsys)
    path = tmp_path / "lbhealthd.bash"
    path.write_text(script)
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for command in walk(build_parser()):
        assert f"        {command.name})\n" in script


@pytest.mark.parametrize(
    ("words", "expected", "absent"),
    [
        (["lbhealthd", "dr"], {"drain"}, {"restore"}),
        (["lbhealthd", "drain", "api/s1", "--f"], {"--for", "--force"}, {"--fix"}),
        (["lbhealthd", "completion", ""], {"bash", "zsh"}, set()),
        (["lbhealthd", "run", "--log-format", ""], {"json", "console"}, {"--dry-run"}),
        (["lbhealthd", "help", "ex"], {"exit-codes"}, {"events"}),
    ],
    ids=["command", "option", "choice", "option-value", "topic"],
)
def test_bash_completes(
    words: list[str],
    expected: set[str],
    absent: set[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Sourced in bash, the function offers commands, options and choices for the words typed."""
    path = tmp_path / "lbhealthd.bash"
    path.write_text(_script("bash", capsys))
    quoted = " ".join(f"'{w}'" for w in words)
    run = (
        f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_lbhealthd; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", run], capture_output=True, text=True, check=True)
    offered = set(done.stdout.split())
    assert expected <= offered
    assert not absent & offered


def test_the_zsh_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The zsh script names every subcommand, and `zsh -n` accepts it (when zsh is here)."""
    script = _script("zsh", capsys)
    assert script.startswith("#compdef lbhealthd\n")
    for command in walk(build_parser()):
        assert f"    '{command.name}:" in script
        assert f"    {command.name})\n" in script
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed: its syntax check was not run")
    path = tmp_path / "_lbhealthd"
    path.write_text(script)
    checked = subprocess.run([zsh, "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    """Only bash and zsh: anything else exits 2."""
    assert main(["completion", "fish"]) == 2


# --- help topics -----------------------------------------------------------------------------


def test_help_lists_every_topic(capsys: pytest.CaptureFixture[str]) -> None:
    """`lbhealthd help` lists each topic with its first line; the files and the accepted
    names are the same set."""
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    texts = topics()
    assert set(texts) == set(TOPICS) >= {"exit-codes", "events", "config", "overrides"}
    for name, text in texts.items():
        assert f"  {name:<12} {text.splitlines()[0]}" in out


@pytest.mark.parametrize("topic", TOPICS)
def test_each_topic_prints_and_points_at_the_docs(
    topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each topic prints its text, which names the document that says more."""
    assert main(["help", topic]) == 0
    out = capsys.readouterr().out
    assert out == topics()[topic]
    assert "docs/" in out or "config.example.yaml" in out
    for document in {w.split(",")[0].rstrip(".:") for w in out.split() if w.startswith("docs/")}:
        assert (ROOT / document).is_file(), document


def test_an_unknown_topic_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown topic exits 2 listing the topics."""
    assert main(["help", "nothing"]) == 2
    assert "exit-codes" in capsys.readouterr().err


def test_the_topics_ship_in_the_wheel() -> None:
    """pyproject's package-data takes every topic file into the package."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["lbhealthd.cli"]
    folder = ROOT / "lbhealthd" / "cli"
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "topics").iterdir())
    assert files == sorted(f"topics/{t}.txt" for t in TOPICS)
    for name in files:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
