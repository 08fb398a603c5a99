"""Runs every server's probe on its own beat, spread over the interval, with a bounded number of
probes in flight; keeps each server's newest sample.

Rules:
- Each server's first beat falls at a random phase of its interval, so a pool is never probed
  all at once; each next beat follows by the interval plus a jitter (± ``jitter`` × interval).
- At most ``max_in_flight`` probes run at once. A beat whose server is still being probed, or
  that cannot start before it is half an interval late (no free slot, or the loop fell behind),
  is skipped and counted in ``skipped``; the cadence goes on. Overload therefore degrades into
  fewer probes, each on time, never into a queue of probes that all time out.
- Changing a server's target restarts its beat at a new random phase; removing it forgets its
  sample. A probe of a removed or changed target that ends afterwards is discarded.
- Fast confirmation (HAProxy's ``fastinter``): when ``on_sample`` says a sample starts or
  extends a streak toward a transition, that server's next beat comes ``fast_interval`` after
  it instead of ``interval``, until a sample says otherwise. At most ``fast_share`` of the
  targets (and never fewer than ``_MIN_FAST``) are confirmed fast at once, so a pool-wide
  event adds a bounded share of probes, never a multiple of the pool's load.

Theory of operation: one task keeps a heap of (due time, sequence, server); it sleeps until the
earliest beat, starts every beat that is due (each probe in its own task), and schedules each
server's next beat. A due beat with no free slot waits for one until its skip deadline; ``sync``
and the end of a probe wake the task early when needed. Per server the
scheduler holds a heap entry, the target and the newest sample, not a task.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from lbhealthd.model import Sample, ServerId

log = structlog.get_logger("lbhealthd.probes.scheduler")

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_COALESCE = 0.01  # seconds: beats due this soon start with the current wake-up
_MARGIN = 0.0005  # seconds past a beat's skip deadline to wake at: timers may fire a bit early
_MIN_FAST = 8  # servers that may be confirmed fast at once, however small the pool


class Prober(Protocol):
    """What the scheduler needs of a prober (HttpProber and FastProber both are one)."""

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,  # noqa: ASYNC109 - the probers' own signature
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample: ...


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe for one server and how often."""

    url: str
    interval: float
    timeout: float
    load_fields: Mapping[str, str]
    fast_interval: float | None = None  # after a sample toward a transition; None: interval


StartHook = Callable[[ServerId, float, float], None]  # (server, due, started): for measurements
#: Told every sample as it arrives; True when it starts or extends a streak toward a transition
#: (the server is then probed again after its target's ``fast_interval``).
SampleHook = Callable[[ServerId, Sample], bool]


class ProbeScheduler:
    """Keeps every target given to ``sync`` probed on its beat; ``latest`` has the results.

    ``skipped`` counts the beats not probed (see the module's rules); ``on_start``, if given, is
    told every probe's due and actual start times (the benchmark measures lateness with it).
    """

    def __init__(
        self,
        prober: Prober,
        clock: Callable[[], float],
        *,
        jitter: float = 0.1,
        rng: random.Random | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        coalesce: float = DEFAULT_COALESCE,
        on_start: StartHook | None = None,
        on_sample: SampleHook | None = None,
        fast_share: float = 0.1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._prober = prober
        self._clock = clock
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - spreading probes, not cryptography
        self._max_in_flight = max_in_flight
        self._coalesce = coalesce
        self._on_start = on_start
        self.on_sample = on_sample
        self._fast_share = fast_share
        self._fast: set[ServerId] = set()  # servers whose next beat is a fast one
        # each server's valid beat: its sequence number and due time
        self._next: dict[ServerId, tuple[int, float]] = {}
        self._targets: dict[ServerId, Target] = {}
        self._latest: dict[ServerId, Sample] = {}
        self._beats: list[tuple[float, int, ServerId, Target]] = []  # a heap
        self._sequence = 0
        self._in_flight: dict[ServerId, asyncio.Task[None]] = {}
        self._wake: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self.skipped = 0

    # --- the public surface ----------------------------------------------------------------

    def sync(self, targets: Mapping[ServerId, Target]) -> None:
        """Start beats for new targets, restart changed ones, forget the ones that left."""
        now = self._clock()
        for sid in [sid for sid in self._targets if sid not in targets]:
            del self._targets[sid]
            self._latest.pop(sid, None)
            self._next.pop(sid, None)
            self._fast.discard(sid)
        earliest = self._beats[0][0] if self._beats else None
        for sid, target in targets.items():
            if self._targets.get(sid) == target:
                continue
            self._targets[sid] = target
            self._push(now + self._rng.uniform(0.0, target.interval), sid, target)
        if len(self._beats) > 2 * len(self._targets) + 64:
            # drop the beats of removed and changed targets (in place: the loop holds the list)
            self._beats[:] = [b for b in self._beats if self._valid(b[1], b[2], b[3])]
            heapq.heapify(self._beats)
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="probe scheduler"
            )
        elif self._beats and (earliest is None or self._beats[0][0] < earliest):
            self._wake_up()

    def latest(self, sid: ServerId) -> Sample | None:
        return self._latest.get(sid)

    @property
    def fast(self) -> int:
        """How many servers are being confirmed fast now."""
        return len(self._fast)

    @property
    def targets(self) -> int:
        return len(self._targets)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def close(self) -> None:
        """Stop the beats and every probe in flight, and wait for them to end."""
        tasks = list(self._in_flight.values())
        if self._runner is not None:
            tasks.append(self._runner)
            self._runner = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
        self._beats.clear()
        self._targets.clear()
        self._next.clear()
        self._fast.clear()

    # --- the beat loop ---------------------------------------------------------------------

    def _push(self, due: float, sid: ServerId, target: Target) -> None:
        self._sequence += 1
        self._next[sid] = (self._sequence, due)
        heapq.heappush(self._beats, (due, self._sequence, sid, target))

    def _valid(self, sequence: int, sid: ServerId, target: Target) -> bool:
        """False for a beat of a removed or changed target, or one a fast beat replaced."""
        beat = self._next.get(sid)
        return self._targets.get(sid) is target and beat is not None and beat[0] == sequence

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock, beats, in_flight = self._clock, self._beats, self._in_flight
        while True:
            now = clock()
            horizon = now + self._coalesce
            while beats and beats[0][0] <= horizon:
                due, sequence, sid, target = beats[0]
                if not self._valid(sequence, sid, target):
                    heapq.heappop(beats)  # removed, changed or replaced since it was scheduled
                    continue
                late = now - due >= target.interval / 2  # negative: started early
                if not late and sid not in in_flight and len(in_flight) >= self._max_in_flight:
                    break  # wait for a free slot, until this beat is too late
                heapq.heappop(beats)
                spread = target.interval * self._jitter
                self._push(due + target.interval + self._rng.uniform(-spread, spread), sid, target)
                if late or sid in in_flight:
                    self.skipped += 1
                else:
                    self._start(loop, sid, target, due, now)
            if not beats:
                await self._sleep(loop, None)  # until sync adds beats
            elif beats[0][0] <= horizon:  # until a slot frees, or this beat is to be skipped
                due, _, _, target = beats[0]
                await self._sleep(loop, due + target.interval / 2 - now + _MARGIN)
            else:
                await self._sleep(loop, beats[0][0] - now)

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        sid: ServerId,
        target: Target,
        due: float,
        now: float,
    ) -> None:
        if self._on_start is not None:
            self._on_start(sid, due, now)
        task = loop.create_task(self._probe(sid, target))
        self._in_flight[sid] = task

    async def _probe(self, sid: ServerId, target: Target) -> None:
        try:
            sample = await self._prober.probe(
                sid, target.url, target.timeout, target.load_fields, self._clock
            )
        except Exception:
            log.exception("probe_crashed", server=str(sid), url=target.url)
            return
        finally:
            del self._in_flight[sid]
            if len(self._in_flight) == self._max_in_flight - 1:
                self._wake_up()
        if self._targets.get(sid) is target:
            self._latest[sid] = sample
            if self.on_sample is not None:
                self._confirm(sid, target, sample)

    def _confirm(self, sid: ServerId, target: Target, sample: Sample) -> None:
        """Bring the next beat forward to ``fast_interval`` when the sample asks for it."""
        assert self.on_sample is not None
        try:
            urgent = self.on_sample(sid, sample)
        except Exception:
            log.exception("sample_hook_crashed", server=str(sid))
            urgent = False
        fast = target.fast_interval
        if not urgent or fast is None or fast >= target.interval:
            self._fast.discard(sid)
            return
        cap = max(_MIN_FAST, int(self._fast_share * len(self._targets)))
        if sid not in self._fast and len(self._fast) >= cap:
            return  # the budget is spent: this one waits for its ordinary beat
        self._fast.add(sid)
        due = self._clock() + fast
        beat = self._next.get(sid)
        if beat is not None and beat[1] <= due:
            return  # its ordinary beat comes sooner
        earliest = self._beats[0][0] if self._beats else None
        self._push(due, sid, target)
        if earliest is None or due < earliest:
            self._wake_up()

    async def _sleep(self, loop: asyncio.AbstractEventLoop, delay: float | None) -> None:
        wake = self._wake = loop.create_future()
        timer = None if delay is None else loop.call_later(delay, _set, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _wake_up(self) -> None:
        if self._wake is not None:
            _set(self._wake)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
