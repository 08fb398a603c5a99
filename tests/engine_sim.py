"""A tiny driver for the pure engine: scripted verdicts per server, one round per second."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lbhealthd.engine import EngineState, Observation, PoolSettings, Settings, decide
from lbhealthd.model import ByHand, Decision, Override, ProbeOutcome, Sample, ServerId
from lbhealthd.testing import failed, ok

# One character per round: H healthy, O overloaded, B in the band, F failed probe, - no sample.
LATENCY = {"H": 50.0, "B": 300.0, "O": 900.0}


def sample_for(code: str, server: ServerId, at: float) -> Sample | None:
    if code == "-":
        return None
    if code == "F":
        return failed(server, at)
    return ok(server, at, latency_ms=LATENCY[code])


@dataclass
class Sim:
    """Runs rounds of the engine for one pool and keeps every decision."""

    pool: PoolSettings
    now: float = 1000.0
    state: EngineState = field(default_factory=EngineState)
    decisions: list[Decision] = field(default_factory=list)

    def round(
        self,
        codes: Mapping[str, str],
        overrides: Mapping[ServerId, Override] | None = None,
        external_out: frozenset[str] = frozenset(),
        step: float = 1.0,
        *,
        frozen: bool = False,
        hand: Mapping[str, ByHand] | None = None,
        weights: Mapping[str, tuple[int, int]] | None = None,
        partial: frozenset[str] = frozenset(),
        lb: Mapping[str, float] | None = None,
    ) -> Decision:
        """One round. ``weights``: (weight in the LB, full weight) by server, default 1/1;
        ``partial``: the servers not every endpoint of an HA pair lists; ``lb``: by server, the
        queue of an LB sample of its own this round."""
        self.now += step
        observations = {}
        for name, code in codes.items():
            server = ServerId(self.pool.name, name)
            weight, full = (weights or {}).get(name, (1, 1))
            observations[server] = Observation(
                sample_for(code, server, self.now),
                external_out=name in external_out,
                weight=weight,
                full_weight=full,
                hand=(hand or {}).get(name),
                lb=None
                if lb is None or name not in lb
                else Sample(server, self.now, ProbeOutcome.OK, {"lb_queue": lb[name]}),
            )
        self.state, decision = decide(
            self.state,
            observations,
            overrides or {},
            Settings({self.pool.name: self.pool}),
            self.now,
            frozen=frozen,
            inconsistent={self.pool.name: frozenset(ServerId(self.pool.name, n) for n in partial)}
            if partial
            else None,
        )
        self.decisions.append(decision)
        return decision

    def run(self, script: Mapping[str, str], **kwargs: object) -> list[Decision]:
        """Run ``len`` rounds of a script: {"s1": "OOOHH", ...} (all strings the same length)."""
        length = len(next(iter(script.values())))
        return [
            self.round({name: codes[i] for name, codes in script.items()}, **kwargs)  # type: ignore[arg-type]
            for i in range(length)
        ]


def acted(decisions: list[Decision]) -> list[tuple[int, str, str]]:
    """(round index, server name, action kind) for every action."""
    return [(i, a.server.server, a.kind.value) for i, d in enumerate(decisions) for a in d.actions]
