"""Helpers for tests of lbhealthd and of code that uses it: a fake clock and sample factories."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lbhealthd.model import ProbeOutcome, Sample, ServerId


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def sid(text: str) -> ServerId:
    """``sid("api/s1")`` → ServerId("api", "s1")."""
    return ServerId.parse(text)


def ok(server: ServerId | str, at: float, **signals: float) -> Sample:
    """A successful sample with the given signals (latency_ms defaults to 10)."""
    server = sid(server) if isinstance(server, str) else server
    values: Mapping[str, float] = {"latency_ms": 10.0, **signals}
    return Sample(server, at, ProbeOutcome.OK, dict(values))


def failed(
    server: ServerId | str, at: float, outcome: ProbeOutcome = ProbeOutcome.TIMEOUT
) -> Sample:
    """A failed sample."""
    server = sid(server) if isinstance(server, str) else server
    return Sample(server, at, outcome, {}, detail=f"probe {outcome.value}")
