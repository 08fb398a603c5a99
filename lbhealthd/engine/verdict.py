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
from lbhealthd.model import Sample


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
    return tuple((name, marks[name].high, marks[name].low) for name in sorted(marks))


_FAILED = Judgement(Verdict.FAILED, ratio=float("inf"))


def judge_sorted(sample: Sample, marks: MarkItems) -> Judgement:
    """``judge`` with the marks already sorted (the engine's hot path)."""
    if not sample.ok:
        return _FAILED
    over: list[str] = []
    missing: list[str] = []
    all_low = True
    ratio = 0.0
    present = 0
    signals = sample.signals
    for name, high, low in marks:
        value = signals.get(name)
        if value is None:
            missing.append(name)
            continue
        present += 1
        if high > 0 and value / high > ratio:
            ratio = value / high
        if value >= high:
            over.append(name)
        if not value < low:
            all_low = False
    if over:
        verdict = Verdict.OVERLOADED
    elif present and all_low:
        verdict = Verdict.HEALTHY
    else:
        verdict = Verdict.BAND
    return Judgement(verdict, ratio, tuple(over), tuple(missing))
