"""Traffic balance: the share of sessions each server gets against the share its weight intends.

Statistic
    Each round the caller passes, per server, the LB's cumulative session counter (HAProxy's
    ``stot``), whether the server is in service and its intended weight. Only servers in service
    with an intended weight above 0 count. Over a sliding window (default 10 s) of these samples::

        actual_i   = Δsessions_i / ΣΔsessions
        intended_i = w_i / Σw                  (time-averaged when weights change in the window)
        ratio_i    = actual_i / intended_i
        imbalance  = max_i ratio_i

    Traffic that follows the weights exactly gives 1.0, and the imbalance is never below 1 (the
    ratios average to 1 when weighted by intended share). In the postmortem, weights of
    100,100,1,1,1 where equal ones were intended gave s1 49.3 % against 20 %: 2.46x.

Noise floor
    Shares measured from few sessions are noisy. If n sessions fall independently on k servers
    that should each get p = 1/k, one server's share has standard deviation sqrt(p(1−p)/n), and a
    share of factor·p lies z = (factor−1)·sqrt(n·p/(1−p)) deviations above its mean
    (``factor_sigmas``). With the default floor of 50 sessions, k = 5 and factor 2 (40 % against
    20 %), the deviation is 5.7 points and z ≈ 3.54; exactly, P(a given server gets ≥ 21 of 50)
    ≈ 3.2e-4, so about 1.6e-3 that one of the five does in one window. The floor weakens as k
    grows (k = 10: z ≈ 2.36, about 9 % per window), which is why the alert also needs ``hold``:
    over a 30 s hold a 10 s window turns over three times, and chance excesses do not persist
    across disjoint windows. Busy pools sit far above the floor: 1,000 sessions over 10 servers
    put 2x at z ≈ 10.5. Below ``min_sessions`` in the window there is no verdict.

No verdict (imbalance None, reason starting "too little traffic") while
    - the window holds fewer than two samples (at the start, or after it restarted);
    - fewer than two servers count;
    - fewer than ``min_sessions`` sessions arrived in the window.

Window
    Samples older than ``window`` are dropped, except the newest of them, which is the baseline,
    so the window spans at least ``window`` seconds once it is full and a poll interval longer than
    the window still gives a verdict. At most ``MAX_SAMPLES`` samples are kept, so rounds faster
    than window / MAX_SAMPLES shorten the span rather than grow the memory. The window
    restarts (only the current sample is kept) when the set of counted servers changes, when a
    counter goes backwards (the LB restarted or the server was re-added: that history is void
    and every share must cover the same span), or when time does not move forward.

Alert rules (hysteresis)
    - Fires when the imbalance is above ``factor`` on every verdict for ``hold`` seconds (from
      the first such verdict; hold 0 fires on the first one).
    - Clears when the imbalance is at or below ``clear_factor`` (default 1 + (factor−1)/2) on
      every verdict for ``hold`` seconds. Between ``clear_factor`` and ``factor`` a firing alert
      stays firing and a quiet one stays quiet.
    - A round without a verdict neither fires nor clears: the alert stays as it is, and a run
      toward firing or clearing starts again, since the evidence must be continuous.
    - Misweighted (the caller names the servers whose live weight differs from the intended
      one, and the two weights): a firing alert does not clear while any is, even when the
      traffic looks even (drains can hide the cause); it clears once the weights are right and
      the traffic balanced.
    - Culprits are the counted servers whose ratio is above ``factor``, worst first; the reason
      names them (or the worst server when there is none).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType

MAX_SAMPLES = 120
NO_VERDICT = "too little traffic"


@dataclass(frozen=True, slots=True)
class ServerTraffic:
    """One server in one round: its cumulative session counter, whether it is in service, and
    the weight the operator intends for it (0 excludes it from the statistic)."""

    sessions_total: int
    in_service: bool
    intended_weight: float

    def __post_init__(self) -> None:
        if self.sessions_total < 0:
            raise ValueError(f"sessions_total must be >= 0, not {self.sessions_total}")
        if not (math.isfinite(self.intended_weight) and self.intended_weight >= 0):
            raise ValueError(f"intended_weight must be finite and >= 0, not {self.intended_weight}")


@dataclass(frozen=True, slots=True)
class ShareInfo:
    """One server's traffic over the window: shares in [0, 1], ratio = actual / intended."""

    actual: float
    intended: float
    ratio: float
    sessions: int


_EMPTY: Mapping[str, ShareInfo] = MappingProxyType({})
_RIGHT: Mapping[str, tuple[int, int]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """The outcome of one round. ``shares`` and ``culprits`` are empty when there is no verdict;
    ``changed`` is true on the round the alert fired or cleared; ``since`` is when it fired.
    ``misweighted``: by server, its live and its intended weight where they differ."""

    imbalance: float | None
    shares: Mapping[str, ShareInfo]
    firing: bool
    changed: bool
    culprits: tuple[str, ...]
    reason: str
    window_sessions: int
    since: float | None
    misweighted: Mapping[str, tuple[int, int]] = field(default_factory=lambda: _RIGHT)


def misweighted_text(misweighted: Mapping[str, tuple[int, int]]) -> str:
    """``s3 weight 1 (expected 100), s4 ...``: the servers in name order."""
    return ", ".join(f"{n} weight {w} (expected {e})" for n, (w, e) in sorted(misweighted.items()))


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    totals: Mapping[str, int]
    weights: Mapping[str, float]


def share_sigma(sessions: int, servers: int) -> float:
    """Standard deviation of one server's share when ``sessions`` fall evenly at random on
    ``servers`` equal servers: sqrt(p(1−p)/n) with p = 1/servers."""
    if sessions < 1 or servers < 1:
        raise ValueError("sessions and servers must be >= 1")
    p = 1.0 / servers
    return math.sqrt(p * (1.0 - p) / sessions)


def factor_sigmas(factor: float, sessions: int, servers: int) -> float:
    """How many standard deviations above its mean a share of ``factor`` times the intended one
    lies, for ``sessions`` spread over ``servers`` equal servers (2.0, 50, 5 gives ≈ 3.54)."""
    p = 1.0 / servers
    return (factor - 1.0) * p / share_sigma(sessions, servers)


def _normalise(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0") + "s"


def _describe(name: str, info: ShareInfo) -> str:
    return (
        f"{name} gets {info.actual:.1%} of traffic vs {info.intended:.1%} intended"
        f" ({info.ratio:.2f}x)"
    )


class BalanceMonitor:
    """Watches one pool's traffic spread round by round; see the module docstring for the rules."""

    def __init__(
        self,
        factor: float = 2.0,
        hold: float = 30.0,
        min_sessions: int = 50,
        window: float = 10.0,
        clear_factor: float | None = None,
    ) -> None:
        if clear_factor is None:
            clear_factor = 1.0 + (factor - 1.0) / 2.0
        if not (math.isfinite(factor) and factor > 1.0):
            raise ValueError(f"factor must be a finite number above 1, not {factor}")
        if not 1.0 < clear_factor <= factor:
            raise ValueError(f"clear_factor must be above 1 and at most factor, not {clear_factor}")
        if not (math.isfinite(hold) and hold >= 0.0):
            raise ValueError(f"hold must be >= 0 seconds, not {hold}")
        if min_sessions < 1:
            raise ValueError(f"min_sessions must be >= 1, not {min_sessions}")
        if not (math.isfinite(window) and window > 0.0):
            raise ValueError(f"window must be > 0 seconds, not {window}")
        self.factor = factor
        self.hold = hold
        self.min_sessions = min_sessions
        self.window = window
        self.clear_factor = clear_factor
        self._samples: deque[_Sample] = deque(maxlen=MAX_SAMPLES)
        self._firing = False
        self._since: float | None = None
        self._run_since: float | None = None  # start of the run of verdicts toward a change
        self._misweighted = _RIGHT
        self._traffic: Mapping[str, ServerTraffic] | None = None  # the last reading recorded

    @property
    def firing(self) -> bool:
        return self._firing

    def update(
        self,
        now: float,
        traffic: Mapping[str, ServerTraffic],
        misweighted: Mapping[str, tuple[int, int]] = _RIGHT,
    ) -> BalanceReport:
        """Add this round's counters (``now`` in seconds) and report the balance and the alert.
        ``misweighted``: the servers whose live weight differs from the intended one.
        ``traffic`` passed again as the very same object is taken as unchanged (not read
        again): pass a new mapping for a new reading, never the old one edited."""
        self._misweighted = MappingProxyType(dict(misweighted)) if misweighted else _RIGHT
        self._record(now, traffic)
        first, last = self._samples[0], self._samples[-1]
        if first.totals is last.totals:  # the counters did not move in the window
            deltas: dict[str, int] = {}
            sessions = 0
        else:
            deltas = {name: last.totals[name] - first.totals[name] for name in last.totals}
            sessions = sum(deltas.values())
        span = last.at - first.at
        if len(last.totals) < 2:
            return self._no_verdict(
                f"{len(last.totals)} server(s) in service with a weight (need 2)", 0
            )
        if len(self._samples) < 2:
            return self._no_verdict("window restarted, waiting for a second sample", 0)
        if sessions < self.min_sessions:
            return self._no_verdict(
                f"{sessions:,} sessions in {_seconds(span)} (need {self.min_sessions:,})",
                sessions,
            )

        intended = self._intended()
        shares: dict[str, ShareInfo] = {}
        for name in sorted(deltas):
            actual = deltas[name] / sessions
            shares[name] = ShareInfo(
                actual=actual,
                intended=intended[name],
                ratio=actual / intended[name],
                sessions=deltas[name],
            )
        ranked = sorted(shares, key=lambda name: (-shares[name].ratio, name))
        imbalance = shares[ranked[0]].ratio
        culprits = tuple(name for name in ranked if shares[name].ratio > self.factor)
        changed = self._step(now, imbalance)

        named = culprits or (ranked[0],)
        head = "" if culprits else f"no server above {self.factor:g}x: "
        reason = (
            head
            + ", ".join(_describe(name, shares[name]) for name in named)
            + f" over {_seconds(span)}, {sessions:,} sessions"
        )
        if self._firing and self._misweighted:
            reason += f"; misweighted: {misweighted_text(self._misweighted)}: the alert stays"
        elif self._firing and not culprits:
            reason += f"; alert clears at <= {self.clear_factor:.2f}x for {_seconds(self.hold)}"
        return BalanceReport(
            imbalance=imbalance,
            shares=MappingProxyType(shares),
            firing=self._firing,
            changed=changed,
            culprits=culprits,
            reason=reason,
            window_sessions=sessions,
            since=self._since,
            misweighted=self._misweighted,
        )

    def _record(self, now: float, traffic: Mapping[str, ServerTraffic]) -> None:
        if traffic is self._traffic and self._samples and now > self._samples[-1].at:
            # The very same reading as last round: its counters and weights, at a new time.
            last = self._samples[-1]
            self._samples.append(_Sample(at=now, totals=last.totals, weights=last.weights))
            self._trim(now)
            return
        self._traffic = traffic
        counted = {
            name: server
            for name, server in traffic.items()
            if server.in_service and server.intended_weight > 0
        }
        sample = _Sample(
            at=now,
            totals={name: server.sessions_total for name, server in counted.items()},
            weights={name: server.intended_weight for name, server in counted.items()},
        )
        if self._samples:
            last = self._samples[-1]
            if (
                now <= last.at
                or last.totals.keys() != sample.totals.keys()
                or any(sample.totals[name] < last.totals[name] for name in sample.totals)
            ):
                self._samples.clear()
        self._samples.append(sample)
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        while len(self._samples) >= 2 and self._samples[1].at <= horizon:
            self._samples.popleft()

    def _intended(self) -> dict[str, float]:
        samples = self._samples
        first, last = samples[0], samples[-1]
        if all(sample.weights == last.weights for sample in samples):
            return _normalise(last.weights)
        # Weights changed inside the window (slow start, an operator): average the intended
        # shares over time, each interval counting the mean of its two ends.
        acc = dict.fromkeys(last.weights, 0.0)
        before = _normalise(first.weights)
        before_at = first.at
        for sample in islice(samples, 1, None):
            after = _normalise(sample.weights)
            dt = sample.at - before_at
            for name in acc:
                acc[name] += dt * (before[name] + after[name]) / 2.0
            before, before_at = after, sample.at
        span = last.at - first.at
        return {name: value / span for name, value in acc.items()}

    def _step(self, now: float, imbalance: float) -> bool:
        """Advance the alert by one verdict; return whether it fired or cleared."""
        if self._firing:
            toward = imbalance <= self.clear_factor and not self._misweighted
        else:
            toward = imbalance > self.factor
        if not toward:
            self._run_since = None
            return False
        if self._run_since is None:
            self._run_since = now
        if now - self._run_since < self.hold:
            return False
        self._firing = not self._firing
        self._since = now if self._firing else None
        self._run_since = None
        return True

    def _no_verdict(self, detail: str, sessions: int) -> BalanceReport:
        self._run_since = None
        reason = f"{NO_VERDICT}: {detail}"
        if self._firing:
            reason += "; alert kept as it was"
        return BalanceReport(
            imbalance=None,
            shares=_EMPTY,
            firing=self._firing,
            changed=False,
            culprits=(),
            reason=reason,
            window_sessions=sessions,
            since=self._since,
            misweighted=self._misweighted,
        )
