"""Verdict of one sample against a pool's high/low marks, and the score that ranks servers.

- A failed probe is FAILED: it counts as overloaded for ``fall``.
- A sample is OVERLOADED when ANY signal is at or above its high mark.
- It is HEALTHY when every signal it carries is strictly below its low mark.
- Otherwise it is in the BAND between the marks and moves the server neither way.
Configured signals missing from a sample are ignored for the verdict and named in the evidence;
a sample carrying none of them is in the band (no evidence either way).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from lbhealthd.engine.settings import Marks
from lbhealthd.model import ProbeOutcome, Sample


class Verdict(enum.StrEnum):
    HEALTHY = "healthy"
    BAND = "band"
    OVERLOADED = "overloaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict with what it was based on. ``ratio`` is the largest value/high over signals."""

    verdict: Verdict
    ratio: float
    over: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def bad(self) -> bool:
        return self.verdict in (Verdict.OVERLOADED, Verdict.FAILED)


def judge(sample: Sample, marks: Mapping[str, Marks]) -> Judgement:
    """Judge one sample. Pure and total: every sample gets a verdict."""
    return judge_sorted(sample, sorted_marks(marks))


MarkItems = tuple[tuple[str, float, float], ...]


def sorted_marks(marks: Mapping[str, Marks]) -> MarkItems:
    """The marks as (signal, high, low), sorted by signal: computed once per pool and round."""
    # floats, so that every comparison in ``assess`` is float against float (the fast one)
    return tuple((name, float(marks[name].high), float(marks[name].low)) for name in sorted(marks))


_FAILED = Judgement(Verdict.FAILED, ratio=float("inf"))
# Module constants: looking a member up on its Enum class costs ten times a global read.
_FAILED_PAIR = (Verdict.FAILED, float("inf"))
_OVERLOADED, _HEALTHY, _BAND = Verdict.OVERLOADED, Verdict.HEALTHY, Verdict.BAND
_OK = ProbeOutcome.OK


def assess(sample: Sample, marks: MarkItems) -> tuple[Verdict, float]:
    """The verdict and the ratio of ``judge_sorted`` without the names of the signals: what
    the engine needs of every sample every round (its hot path)."""
    if sample.outcome is not _OK:
        return _FAILED_PAIR
    signals = sample.signals
    ratio = 0.0
    over = False
    all_low = True
    present = False
    for name, high, low in marks:
        value = signals.get(name)
        if value is None:
            continue
        present = True
        if high > 0:
            r = value / high
            if r > ratio:
                ratio = r
        if value >= high:
            over = True
        if not value < low:  # NaN is not below its low mark either
            all_low = False
    if over:
        return _OVERLOADED, ratio
    if present and all_low:
        return _HEALTHY, ratio
    return _BAND, ratio


def judge_sorted(sample: Sample, marks: MarkItems) -> Judgement:
    """``judge`` with the marks already sorted: ``assess`` plus which signals were over their
    high mark and which were missing."""
    verdict, ratio = assess(sample, marks)
    if verdict is Verdict.FAILED:
        return _FAILED
    signals = sample.signals
    over = tuple(name for name, high, _ in marks if name in signals and signals[name] >= high)
    missing = tuple(name for name, _, _ in marks if name not in signals)
    return Judgement(verdict, ratio, over, missing)
