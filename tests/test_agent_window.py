"""`lbhealthd agent --window`: cpu is the mean of the samples of the window, so one busy
second among quiet ones does not read as overload, while load that lasts does."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from lbhealthd.agent import (
    Agent,
    LoadReader,
    Thresholds,
    Window,
    agent_reply,
    check_window,
)
from lbhealthd.agent.load import Load
from lbhealthd.cli import build_parser, main

QUIET, BUSY = 0.2, 1.0
THRESHOLDS = Thresholds(full_below=0.5, drain_at=0.95, min_weight=10)
FLOOR = "ready 10%\n"  # the reply at and above drain_at


def reply_for(cpu: float | None) -> str:
    return agent_reply(Load(cpu=cpu), THRESHOLDS)


def fed(window: float, shares: list[float | None], start: float = 100.0) -> Window:
    """A window given one sample a second, the last at ``start + len(shares) - 1``."""
    w = Window(window)
    for i, share in enumerate(shares):
        w.add(start + i, share)
    return w


def test_one_busy_sample_in_a_quiet_window_does_not_reach_drain_at() -> None:
    w = fed(5.0, [QUIET, QUIET, QUIET, QUIET, BUSY])
    cpu = w.value(104.0)
    assert cpu == pytest.approx((4 * QUIET + BUSY) / 5)
    assert cpu is not None and cpu < THRESHOLDS.drain_at
    assert reply_for(cpu) == "ready 100%\n"


def test_sustained_load_reaches_drain_at() -> None:
    w = fed(5.0, [QUIET, BUSY, BUSY, BUSY, BUSY, BUSY, BUSY])
    assert w.value(106.0) == pytest.approx(BUSY)  # the quiet sample has aged out
    assert reply_for(w.value(106.0)) == FLOOR


def test_window_zero_reports_the_latest_sample() -> None:
    w = fed(0.0, [QUIET, QUIET, QUIET, QUIET, BUSY])
    assert w.value(104.0) == BUSY
    assert reply_for(w.value(104.0)) == FLOOR
    assert fed(0.0, [BUSY, None]).value(101.0) is None  # as before: a failed sample is unknown


@pytest.mark.parametrize(
    ("window", "shares", "now", "expected"),
    [
        (5.0, [], 100.0, None),
        (5.0, [0.4], 100.0, 0.4),
        (5.0, [0.4], 130.0, 0.4),  # the latest sample always counts
        (0.5, [0.2, 0.8], 101.9, 0.8),  # a window shorter than the interval: the latest
        (3.0, [0.0, 0.3, 0.6, 0.9], 103.0, 0.6),  # samples at 100..103: those after 100
        (3.0, [0.0, 0.3, 0.6, 0.9], 104.5, 0.75),  # after 101.5: 0.6, 0.9
        (5.0, [0.2, None, 0.4], 102.0, 0.3),  # a failed sample is left out
        (5.0, [None, None], 101.0, None),
    ],
)
def test_window_value(
    window: float, shares: list[float | None], now: float, expected: float | None
) -> None:
    value = fed(window, shares).value(now)
    assert value == (None if expected is None else pytest.approx(expected))


def test_old_samples_are_dropped() -> None:
    w = fed(2.0, [0.5] * 1000)
    assert len(w._samples) <= 3


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), 601.0])
def test_check_window_refuses(seconds: float) -> None:
    with pytest.raises(ValueError, match="window must be between 0s and 600s"):
        check_window(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sampled_reader(tmp_path: Path, window: float, shares: list[float]) -> LoadReader:
    """A reader under a one-CPU cgroup quota, fed one sample a second at the given shares."""
    clock = Clock()
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    usage = 1_000_000
    (tmp_path / "cpu.stat").write_text(f"usage_usec {usage}\n")
    reader = LoadReader(tmp_path, clock=clock, window=window)
    reader.sample()  # primes
    for share in shares:
        clock.now += 1.0
        usage += round(share * 1_000_000)
        (tmp_path / "cpu.stat").write_text(f"usage_usec {usage}\n")
        reader.sample()
    return reader


@pytest.mark.parametrize(
    ("window", "shares", "reply"),
    [
        (5.0, [QUIET, QUIET, QUIET, QUIET, BUSY], "ready 100%\n"),
        (5.0, [QUIET, BUSY, BUSY, BUSY, BUSY, BUSY], FLOOR),
        (0.0, [QUIET, QUIET, QUIET, QUIET, BUSY], FLOOR),
    ],
    ids=["one-busy-second", "sustained", "window-0"],
)
async def test_health_and_agent_check_report_the_window(
    tmp_path: Path, window: float, shares: list[float], reply: str
) -> None:
    """The /health cpu and its agent line are the window's mean (the raw sample with 0)."""
    reader = sampled_reader(tmp_path, window, shares)
    expected = shares[-1] if window == 0 else sum(shares[-5:]) / 5
    async with (
        Agent("127.0.0.1:0", source=reader, thresholds=THRESHOLDS) as agent,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"http://127.0.0.1:{agent.http_port}/health") as resp:
            body = await resp.json()
        assert agent.reply() == reply
    assert body["cpu"] == pytest.approx(expected)
    assert body["agent"] == reply.strip()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [([], 5.0), (["--window", "0"], 0.0), (["--window", "2.5"], 2.5), (["--window", "10s"], 10.0)],
)
def test_window_flag(text: list[str], seconds: float) -> None:
    assert build_parser().parse_args(["agent", *text]).window == seconds


@pytest.mark.parametrize("text", ["-1s", "soon", "11m", "nan", "-0.5"])
def test_window_flag_refuses(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["agent", f"--window={text}"])
    assert exc.value.code == 2
    assert "invalid window" in capsys.readouterr().err


def test_window_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--window DURATION" in help_text
    assert "0 reports the latest sample" in help_text
