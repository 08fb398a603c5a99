"""Rule 5's capacity check: a drain only if the servers that stay in rotation can carry the load.

With a pool's ``capacity_signal`` set (a signal whose value is the share of a server's capacity
in use, 1.0 = full), the load of a server ``i`` is ``w_i × v_i`` (its live weight times its
value: the LB sends it traffic in proportion to its weight). Draining moves a server's load
onto the servers left in rotation, in proportion to their weights, so each of them gains
``w_d × v_d / W`` (W: the sum of their weights) and their weighted mean becomes

    projected = (Σ_{i in rotation} w_i × v_i) / (Σ_{i staying} w_i)

(the numerator counts the drained servers' load too: it moves, it does not vanish). A drain is
allowed only while ``projected < high`` of the signal. Each drain accepted in a round takes its
weight off the denominator, so the next candidate sees a higher projection.

The figure is unknown, and the drain refused, when a server in rotation (the candidate
included) has no value of the signal in its newest sample (no sample yet, a failed probe, the
signal missing): lbhealthd cannot tell that the rest can carry its load. Servers already out of
rotation (drained, under an override, reported down by the LB) and servers of weight 0 carry
nothing and count nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lbhealthd.engine.hysteresis import Phase
from lbhealthd.engine.state import Observation, ServerState
from lbhealthd.model import ProbeOutcome, Reason, Rule, ServerId

_SHOWN = 10


class Capacity:
    """The pool's load over its servers in rotation, computed once per round with a candidate."""

    __slots__ = ("high", "load", "signal", "unknown", "weight")

    def __init__(
        self,
        signal: str,
        high: float,
        servers: Mapping[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
    ) -> None:
        self.signal = signal
        self.high = high
        self.load = 0.0  # Σ w_i × v_i over the servers in rotation
        self.weight = 0  # Σ w_i over the servers in rotation not yet drained this round
        self.unknown: list[str] = []  # servers in rotation without a value of the signal
        in_service = Phase.IN_SERVICE
        for sid, st in servers.items():
            obs = observations.get(sid)
            if obs is None or st.phase is not in_service or obs.external_out or obs.weight <= 0:
                continue  # out of rotation, or weight 0: it carries no load and takes none
            value = _value(obs, signal)
            if value is None:
                self.unknown.append(sid.server)
                continue
            self.load += obs.weight * value
            self.weight += obs.weight

    def check(self, sid: ServerId, obs: Observation) -> Reason | None:
        """None if draining ``sid`` leaves the others below the high mark, else why not."""
        staying = self.weight - obs.weight
        evidence: dict[str, object] = {
            "capacity_signal": self.signal,
            "high": self.high,
            "weight_staying": staying,
        }
        if self.unknown:
            names = sorted(self.unknown)
            evidence["projected"] = None
            evidence["without_value"] = names[: _SHOWN * 10]
            shown = ", ".join(names[:_SHOWN]) + (" ..." if len(names) > _SHOWN else "")
            return Reason(
                Rule.CAPACITY,
                f"overloaded, but the load the others would carry is unknown: no "
                f"{self.signal} value from {shown}",
                evidence,
            )
        projected = self.load / staying if staying > 0 else float("inf")
        evidence["projected"] = round(projected, 4) if staying > 0 else None
        if projected < self.high:
            return None
        figure = f"{projected:.3g}" if staying > 0 else "unbounded (no weight left)"
        return Reason(
            Rule.CAPACITY,
            f"overloaded, but the servers left could not carry its load: {self.signal} "
            f"projected {figure} >= high {self.high:g}",
            evidence,
        )

    def drained(self, obs: Observation) -> dict[str, object]:
        """A drain was accepted: its weight no longer carries load. Returns the evidence."""
        self.weight -= obs.weight
        return {
            "capacity_signal": self.signal,
            "high": self.high,
            "weight_staying": self.weight,
            "projected": round(self.load / self.weight, 4),
        }

    def behind(self, sid: ServerId, obs: Observation, worse: ServerId) -> Reason:
        """Why a candidate ranked after one refused for capacity is refused too (worst first:
        a less loaded server never goes out while a worse one is kept in for capacity)."""
        reason = self.check(sid, obs)
        if reason is not None:
            return reason
        staying = self.weight - obs.weight
        return Reason(
            Rule.CAPACITY,
            f"overloaded, but {worse.server}, ranked worse, is kept in rotation for capacity "
            "(worst first)",
            {
                "capacity_signal": self.signal,
                "high": self.high,
                "weight_staying": staying,
                "projected": round(self.load / staying, 4),
                "worse_kept": worse.server,
            },
        )


def _value(obs: Observation, signal: str) -> float | None:
    sample = obs.sample
    if sample is None or sample.outcome is not ProbeOutcome.OK:
        return None
    value = sample.signals.get(signal)
    if value is None or not math.isfinite(value):
        return None
    return float(value)
