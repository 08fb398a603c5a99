"""The probe scheduler with a fake prober: beats spread over the interval, the bound on probes in
flight, and late beats skipped rather than queued. Every wait has a deadline."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping

import pytest

from lbhealthd.model import ProbeOutcome, Sample, ServerId
from lbhealthd.probes.scheduler import DEFAULT_COALESCE, ProbeScheduler, Target

DEADLINE = 5.0  # seconds any condition below may take to come true


class FakeProber:
    """Records each probe; holds it until ``release`` is set; tracks the most run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.running: dict[ServerId, int] = {}
        self.most = 0
        self.probes: list[ServerId] = []
        self.changed = asyncio.Event()

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample:
        started = now()
        self.running[server] = self.running.get(server, 0) + 1
        self.most = max(self.most, sum(self.running.values()))
        self.probes.append(server)
        self.changed.set()
        try:
            await self.release.wait()
        finally:
            self.running[server] -= 1
            if not self.running[server]:
                del self.running[server]
            self.changed.set()
        return Sample(server, started, ProbeOutcome.OK, {"latency_ms": 1.0, "url": len(url)})

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds after some probe started or ended."""
        async with asyncio.timeout(DEADLINE):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class Starts:
    """The scheduler's start hook: every probe's server, due time and start time."""

    def __init__(self) -> None:
        self.records: list[tuple[ServerId, float, float]] = []

    def __call__(self, server: ServerId, due: float, started: float) -> None:
        self.records.append((server, due, started))


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds: for a counter with no event to wait on."""
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110 - polls a plain counter, under a deadline
            await asyncio.sleep(0.005)


def targets(count: int, interval: float, timeout: float = 0.05) -> dict[ServerId, Target]:
    return {
        ServerId("api", f"s{i}"): Target(f"http://10.0.0.{i}/health", interval, timeout, {})
        for i in range(count)
    }


@pytest.fixture
async def prober() -> AsyncIterator[FakeProber]:
    fake = FakeProber()
    yield fake
    fake.release.set()


async def test_first_beats_are_spread_over_the_interval(prober: FakeProber) -> None:
    """Each server starts at its own random phase: the first probes span the interval."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    scheduler = ProbeScheduler(prober, loop.time, rng=random.Random(7), on_start=starts)
    scheduler.sync(targets(50, interval=1.0))
    try:
        await prober.until(lambda: len(set(prober.probes)) == 50)
    finally:
        await scheduler.close()
    first: dict[ServerId, float] = {}
    for server, due, _ in starts.records:
        first.setdefault(server, due)
    dues = sorted(first.values())
    assert 0.75 < dues[-1] - dues[0] < 1.0  # seed 7 draws phases from 0.04 to 0.98
    assert len(set(dues)) == 50
    assert scheduler.latest(ServerId("api", "s3")) is not None


async def test_beats_close_together_share_one_wake_up(prober: FakeProber) -> None:
    """Beats due within the coalescing window of the earliest start with it, early."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    scheduler = ProbeScheduler(
        prober, loop.time, rng=random.Random(6), coalesce=0.05, on_start=starts
    )
    scheduler.sync(targets(40, interval=1.0))
    try:
        await prober.until(lambda: len(prober.probes) == 40)
    finally:
        await scheduler.close()
    wake_ups = {started for _, _, started in starts.records}
    assert len(wake_ups) <= 1.0 / 0.05 + 1
    assert all(-0.05 <= started - due < 1.0 / 2 for _, due, started in starts.records)


async def test_probes_in_flight_are_bounded(prober: FakeProber) -> None:
    """No more than max_in_flight probes run at once, however many beats fall due."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    prober.release.clear()
    scheduler = ProbeScheduler(
        prober, loop.time, rng=random.Random(1), max_in_flight=3, on_start=starts
    )
    scheduler.sync(targets(10, interval=0.05))
    try:
        await prober.until(lambda: len(prober.probes) == 3)
        # Held at the bound while the other servers' beats fall due: those are skipped.
        await eventually(lambda: scheduler.skipped >= 30)
        assert scheduler.in_flight == 3
        assert len(prober.probes) == 3
        prober.release.set()
        await prober.until(lambda: len(set(prober.probes)) == 10)
    finally:
        await scheduler.close()
    assert prober.most == 3
    assert all(started - due <= 0.05 / 2 for _, due, started in starts.records)


async def test_a_late_beat_is_skipped_not_run_late(prober: FakeProber) -> None:
    """Beats more than half an interval late (the loop was stalled) are skipped and counted;
    the first probes after the stall start on a current beat."""
    loop = asyncio.get_running_loop()
    offset = 0.0

    def clock() -> float:
        return loop.time() + offset

    starts = Starts()
    scheduler = ProbeScheduler(prober, clock, rng=random.Random(2), on_start=starts)
    scheduler.sync(targets(20, interval=0.1))
    offset = 1.0  # ten intervals pass before the scheduler runs at all
    try:
        await prober.until(lambda: len(set(prober.probes)) == 20)
    finally:
        await scheduler.close()
    assert scheduler.skipped >= 20 * 8
    window = DEFAULT_COALESCE  # beats due that soon after a wake-up start with it, early
    assert all(-window <= started - due <= 0.1 / 2 for _, due, started in starts.records)


async def test_a_beat_of_a_server_still_being_probed_is_skipped(prober: FakeProber) -> None:
    """A server is never probed twice at once: a beat that finds its probe running is skipped."""
    loop = asyncio.get_running_loop()
    prober.release.clear()
    scheduler = ProbeScheduler(prober, loop.time, rng=random.Random(3))
    scheduler.sync(targets(1, interval=0.02))
    try:
        await prober.until(lambda: len(prober.probes) == 1)
        await eventually(lambda: scheduler.skipped >= 3)
        assert len(prober.probes) == 1
        prober.release.set()
        await prober.until(lambda: len(prober.probes) >= 3)
    finally:
        await scheduler.close()
    assert prober.most == 1


async def test_sync_forgets_removed_servers_and_restarts_changed_ones(prober: FakeProber) -> None:
    """A removed server loses its sample and is probed no more; a changed target's new URL is
    probed; a probe of a removed server that ends later is discarded."""
    loop = asyncio.get_running_loop()
    scheduler = ProbeScheduler(prober, loop.time, rng=random.Random(4))
    pool = targets(3, interval=0.05)
    a, b, c = list(pool)
    scheduler.sync(pool)
    try:
        await prober.until(lambda: len(set(prober.probes)) == 3)
        await prober.until(lambda: not prober.running)
        assert scheduler.latest(a) is not None
        prober.release.clear()
        prober.probes.clear()
        await prober.until(lambda: b in prober.running)
        changed = Target("http://10.0.0.99/other-path", 0.05, 0.05, {})
        scheduler.sync({a: changed, c: pool[c]})
        assert scheduler.latest(b) is None
        assert scheduler.targets == 2
        prober.release.set()
        prober.probes.clear()
        await prober.until(lambda: prober.probes.count(a) >= 2 and prober.probes.count(c) >= 2)
        await prober.until(lambda: not prober.running)
    finally:
        await scheduler.close()
    assert b not in prober.probes
    assert scheduler.latest(b) is None
    latest_a = scheduler.latest(a)
    assert latest_a is not None
    assert latest_a.signals["url"] == len(changed.url)


async def test_close_stops_probes_in_flight(prober: FakeProber) -> None:
    """close() cancels the probes in flight and the beat loop, and leaves no task behind."""
    loop = asyncio.get_running_loop()
    prober.release.clear()
    before = asyncio.all_tasks()
    scheduler = ProbeScheduler(prober, loop.time, rng=random.Random(5))
    scheduler.sync(targets(5, interval=0.01))
    await prober.until(lambda: len(prober.running) == 5)
    await scheduler.close()
    assert scheduler.in_flight == 0
    assert not prober.running
    assert asyncio.all_tasks() == before


def test_max_in_flight_must_be_positive(prober: FakeProber) -> None:
    """A bound below one is refused."""
    with pytest.raises(ValueError, match="max_in_flight"):
        ProbeScheduler(prober, lambda: 0.0, max_in_flight=0)


# --- fast confirmation ------------------------------------------------------------------------


def fast_targets(count: int, interval: float, fast: float | None) -> dict[ServerId, Target]:
    return {
        ServerId("api", f"s{i}"): Target(f"http://10.0.0.{i}/health", interval, 0.05, {}, fast)
        for i in range(count)
    }


class Urgent:
    """The sample hook: urgent for the servers in ``names``; records every call."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.seen: list[tuple[ServerId, float]] = []

    def __call__(self, sid: ServerId, sample: Sample) -> bool:
        self.seen.append((sid, sample.at))
        return sid.server in self.names


def gaps(starts: Starts, server: str) -> list[float]:
    """The time between one start of ``server`` and the due time of its next beat."""
    mine = [(due, started) for sid, due, started in starts.records if sid.server == server]
    return [mine[i + 1][0] - mine[i][1] for i in range(len(mine) - 1)]


async def test_a_sample_toward_a_transition_is_confirmed_after_fast_interval(
    prober: FakeProber,
) -> None:
    """The urgent server's next beats come fast_interval after its samples; the other
    server keeps its interval (the control)."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    hook = Urgent("s0")
    scheduler = ProbeScheduler(
        prober, loop.time, rng=random.Random(4), on_start=starts, on_sample=hook
    )
    scheduler.sync(fast_targets(2, interval=0.4, fast=0.05))
    try:
        await prober.until(lambda: prober.probes.count(ServerId("api", "s0")) >= 5)
        await prober.until(lambda: prober.probes.count(ServerId("api", "s1")) >= 2)
    finally:
        await scheduler.close()
    urgent, calm = gaps(starts, "s0"), gaps(starts, "s1")
    assert urgent and all(g <= 0.05 + 0.01 for g in urgent[:4])
    assert calm and all(g >= 0.4 * 0.9 - 0.01 for g in calm)
    assert scheduler.fast == 0  # closed: forgotten


async def test_fast_confirmation_ends_when_the_sample_says_so(prober: FakeProber) -> None:
    """A server whose samples stop being urgent goes back to its interval."""
    loop = asyncio.get_running_loop()
    starts = Starts()
    hook = Urgent("s0")
    scheduler = ProbeScheduler(
        prober, loop.time, rng=random.Random(5), on_start=starts, on_sample=hook
    )
    scheduler.sync(fast_targets(1, interval=0.3, fast=0.03))
    try:
        await prober.until(lambda: len(prober.probes) >= 3)
        assert scheduler.fast == 1
        hook.names.clear()
        before = len(prober.probes)
        await prober.until(lambda: len(prober.probes) >= before + 3)
        assert scheduler.fast == 0
    finally:
        await scheduler.close()
    assert gaps(starts, "s0")[-1] >= 0.3 * 0.9 - 0.01


async def test_fast_confirmation_is_bounded_to_a_share_of_the_servers(
    prober: FakeProber,
) -> None:
    """Every server urgent at once (a pool-wide event): at most a tenth of them, and never
    fewer than eight, are confirmed fast; the rest keep their interval."""
    loop = asyncio.get_running_loop()
    names = [f"s{i}" for i in range(100)]
    hook = Urgent(*names)
    scheduler = ProbeScheduler(prober, loop.time, rng=random.Random(6), on_sample=hook)
    scheduler.sync(fast_targets(100, interval=0.3, fast=0.03))
    most = 0
    try:
        async with asyncio.timeout(DEADLINE):
            while len(hook.seen) < 300:
                prober.changed.clear()
                await prober.changed.wait()
                most = max(most, scheduler.fast)
    finally:
        await scheduler.close()
    assert most == 10


async def test_without_fast_interval_nothing_is_hastened(prober: FakeProber) -> None:
    loop = asyncio.get_running_loop()
    starts = Starts()
    scheduler = ProbeScheduler(
        prober, loop.time, rng=random.Random(8), on_start=starts, on_sample=Urgent("s0")
    )
    scheduler.sync(fast_targets(1, interval=0.2, fast=None))
    try:
        await prober.until(lambda: len(prober.probes) >= 3)
    finally:
        await scheduler.close()
    assert scheduler.fast == 0
    assert all(g >= 0.2 * 0.9 - 0.01 for g in gaps(starts, "s0"))
