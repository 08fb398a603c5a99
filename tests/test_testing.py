"""The test helpers in lbhealthd.testing say what they claim, judged by the engine itself."""

from __future__ import annotations

from lbhealthd.engine.settings import Marks
from lbhealthd.engine.verdict import Verdict, judge
from lbhealthd.model import ServerId
from lbhealthd.testing import FakeClock, FakeProbes

S1, S2 = ServerId("api", "s1"), ServerId("api", "s2")
MARKS = {"cpu": (0.9, 0.6), "latency_ms": (1000.0, 500.0)}
ENGINE_MARKS = {name: Marks(high, low) for name, (high, low) in MARKS.items()}


def test_fake_probes_helpers_land_on_the_right_side_of_the_marks() -> None:
    """healthy, band, overload and fail give the verdicts their names say."""
    probes = FakeProbes(FakeClock(), marks=MARKS)
    probes.sync({S1: None})
    verdicts = {}
    for helper in (probes.healthy, probes.band, probes.overload, probes.fail):
        helper("s1")
        sample = probes.latest(S1)
        assert sample is not None
        verdicts[helper.__name__] = judge(sample, ENGINE_MARKS).verdict
    assert verdicts == {
        "healthy": Verdict.HEALTHY,
        "band": Verdict.BAND,
        "overload": Verdict.OVERLOADED,
        "fail": Verdict.FAILED,
    }


def test_fake_probes_stamp_each_sample_at_the_clock() -> None:
    """A later clock gives a newer sample; only synced targets have one, silenced ones none."""
    clock = FakeClock(10.0)
    probes = FakeProbes(clock, marks=MARKS)
    assert probes.latest(S1) is None
    probes.sync({S1: None, S2: None})
    first = probes.latest(S1)
    clock.advance(0.2)
    second = probes.latest(S1)
    assert first is not None and second is not None and second.at == first.at + 0.2
    probes.silence("s2")
    assert probes.latest(S2) is None
