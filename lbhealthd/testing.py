"""Helpers for tests of lbhealthd and of code that uses it: a fake clock, sample factories,
scripted probes and an in-memory load balancer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lbhealthd.drivers.memory import MemoryDriver, MemoryServer
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


class FakeProbes:
    """Stands in for the probe scheduler (``sync``, ``latest``, ``close``): what each server
    reports is set by the test, and every ``latest()`` is a new sample stamped at the clock's
    now, so a round at a later time sees a new sample.

    Servers are named ``s1`` (in ``pool``) or ``POOL/SERVER``; a server the test said nothing
    of is healthy. ``marks`` (signal -> (high, low)) lets ``overload``, ``band`` and
    ``healthy`` pick values on the right side of each mark. Like the scheduler, only targets
    given to the last ``sync`` have samples.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        pool: str = "api",
        marks: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.clock = clock
        self.pool = pool
        self.marks = dict(marks or {"latency_ms": (500.0, 200.0)})
        self.targets: dict[ServerId, object] = {}
        self.syncs = 0
        self.closed = False
        self._reports: dict[ServerId, tuple[ProbeOutcome, dict[str, float]] | None] = {}
        self._kept: dict[ServerId, Sample | None] = {}  # see ``keep``

    # --- the scheduler's surface --------------------------------------------------------------

    def sync(self, targets: Mapping[ServerId, object]) -> None:
        self.targets = dict(targets)
        self.syncs += 1

    def latest(self, server: ServerId) -> Sample | None:
        if server not in self.targets:
            return None
        if server in self._kept:
            kept = self._kept[server]
            if kept is None:
                kept = self._kept[server] = self._newest(server)
            return kept
        return self._newest(server)

    def _newest(self, server: ServerId) -> Sample | None:
        report = self._reports.get(server, (ProbeOutcome.OK, self._values(0.5, low=True)))
        if report is None:
            return None
        outcome, signals = report
        if outcome is not ProbeOutcome.OK:
            return failed(server, self.clock(), outcome)
        return Sample(server, self.clock(), outcome, dict(signals))

    async def close(self) -> None:
        self.closed = True

    # --- what the servers report --------------------------------------------------------------

    def keep(self, *names: str) -> None:
        """These servers are not probed again until ``probe_again``: their newest sample stays
        the very same object, as the scheduler's does between two probes of a server."""
        for name in names:
            self._kept.setdefault(self._sid(name), None)

    def probe_again(self, *names: str) -> None:
        """These servers get a new sample at every ``latest`` again."""
        for name in names:
            self._kept.pop(self._sid(name), None)

    def set(self, *names: str, **signals: float) -> None:
        """These servers answer with ``signals`` (``latency_ms`` defaults to 10)."""
        for name in names:
            self._reports[self._sid(name)] = (ProbeOutcome.OK, {"latency_ms": 10.0, **signals})

    def fail(self, *names: str, outcome: ProbeOutcome = ProbeOutcome.TIMEOUT) -> None:
        """These servers' probes fail."""
        for name in names:
            self._reports[self._sid(name)] = (outcome, {})

    def silence(self, *names: str) -> None:
        """These servers have no sample at all (not probed yet)."""
        for name in names:
            self._reports[self._sid(name)] = None

    def healthy(self, *names: str) -> None:
        """Every signal at half its low mark."""
        self._all(names, self._values(0.5, low=True))

    def band(self, *names: str) -> None:
        """Every signal halfway between its low and high marks: neither healthy nor overloaded."""
        self._all(names, {s: (high + low) / 2 for s, (high, low) in self.marks.items()})

    def overload(self, *names: str, factor: float = 1.05) -> None:
        """Every signal at ``factor`` times its high mark (a larger factor ranks worse)."""
        self._all(names, self._values(factor, low=False))

    def _all(self, names: tuple[str, ...], signals: dict[str, float]) -> None:
        for name in names:
            self._reports[self._sid(name)] = (ProbeOutcome.OK, dict(signals))

    def _values(self, factor: float, *, low: bool) -> dict[str, float]:
        return {s: factor * (lo if low else high) for s, (high, lo) in self.marks.items()}

    def _sid(self, name: str) -> ServerId:
        return sid(name) if "/" in name else ServerId(self.pool, name)


def memory_pool(
    pool: str = "api",
    size: int = 5,
    *,
    weight: int = 100,
    endpoints: int = 1,
    agents: Iterable[str] = (),
) -> MemoryDriver:
    """A MemoryDriver with one pool of servers ``s1``..``s<size>`` (ports 8001..), each of
    ``weight``; ``agents`` names the servers that run an agent-check."""
    with_agent = set(agents)
    servers = [
        MemoryServer(f"s{i}", port=8000 + i, weight=weight, has_agent=f"s{i}" in with_agent)
        for i in range(1, size + 1)
    ]
    return MemoryDriver({pool: servers}, endpoints=endpoints)
