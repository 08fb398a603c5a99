"""The pool as a whole, once each of its servers was decided alone (engine/pool.py): rule 5's
drains within the governor's caps, worst first; rule 6's slow-start weights, which depend on
the weights of the others (and toward the expected weight under rule 11); and the pool's
warnings (blind, inconsistent, overrides beyond the
caps).

:class:`WholePool` holds the state of a ``PoolPass`` and works on the pool; ``PoolPass`` walks
the servers.
"""

from __future__ import annotations

from collections.abc import Mapping

from lbhealthd.engine import reasons, slowstart
from lbhealthd.engine.capacity import Capacity
from lbhealthd.engine.governor import budget, hold_time
from lbhealthd.engine.hysteresis import Event, Phase, step
from lbhealthd.engine.settings import PoolSettings
from lbhealthd.engine.state import Observation, ServerState
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Blocked,
    Desired,
    Override,
    OverrideKind,
    Reason,
    Released,
    Rule,
    Sample,
    ServerId,
)

_IN_SERVICE = Desired(AdminState.READY)
_DRAINED = Desired(AdminState.DRAIN)


class WholePool:
    """The state of one pass over a pool, and the rules over the pool as a whole; ``PoolPass``
    (engine/pool.py) adds the rules that look at one server at a time."""

    __slots__ = (
        "actions",
        "blind",
        "blocked",
        "candidates",
        "desired",
        "failed",
        "frozen",
        "manual",
        "new",
        "next_wake",
        "now",
        "out",
        "partial",
        "probed",
        "ps",
        "ramping",
        "released",
        "servers",
        "unprobed",
        "warnings",
    )

    def __init__(
        self,
        ps: PoolSettings,
        now: float,
        *,
        blind: bool,
        frozen: bool,
        partial: frozenset[ServerId] = frozenset(),
    ) -> None:
        self.ps = ps
        self.now = now
        self.blind = blind
        self.frozen = frozen
        # Servers some endpoints of the LB's HA pair do not list: non-empty, the pool is
        # inconsistent (rule 10).
        self.partial = partial
        self.servers: dict[ServerId, ServerState] = {}
        self.desired: dict[ServerId, Desired] = {}
        self.actions: list[Action] = []
        self.blocked: list[Blocked] = []
        self.released: list[Released] = []
        self.warnings: list[Reason] = []
        self.next_wake: float | None = None
        self.candidates: list[ServerId] = []  # in service with ``fall`` bad samples (rule 5)
        self.manual: list[ServerId] = []  # out by an operator's override
        self.ramping: list[ServerId] = []  # in service below their full weight (rule 6)
        self.probed = self.failed = self.unprobed = 0  # rule 1's count
        self.out = 0  # servers out of rotation, whatever took them out
        self.new = 0  # servers the engine had no memory of

    def wake_at(self, when: float) -> None:
        if self.next_wake is None or when < self.next_wake:
            self.next_wake = when

    def whole_pool(
        self,
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
    ) -> None:
        """Rule 1's and rule 10's warnings, rule 5 (drains within the caps), rule 6's weights,
        and the warning for overrides beyond the caps."""
        if self.blind:
            self.warnings.append(
                reasons.blind_warning(
                    self.ps, self.probed, self.failed, self.unprobed, len(self.servers)
                )
            )
        if self.partial:
            self.warnings.append(reasons.inconsistent_warning(self.ps, self.partial))
        self._drains(observations, overrides)
        waiting = [*self.candidates, *self.ramping]
        if waiting:
            reference = self._reference(observations)
            for sid in waiting:
                st = self.servers[sid]
                self.desired[sid] = (
                    out_desired(st)
                    if st.phase is not Phase.IN_SERVICE
                    else self._ramped(sid, st, observations[sid], reference)
                )
        self._check_caps(observations)

    def _drains(
        self,
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
    ) -> None:
        """Rule 5 over the candidates (in service, ``fall`` bad samples), worst first."""
        ps, cur = self.ps, self.servers
        size = len(cur)
        self.candidates.sort(key=lambda sid: (-cur[sid].ratio, -cur[sid].bad, sid))
        capacity: Capacity | None = None  # computed at the first candidate within the caps
        kept: ServerId | None = None  # the first candidate refused for capacity
        for sid in self.candidates:
            st = cur[sid]
            evidence = reasons.drain_evidence(st, _newest(observations[sid]), ps)
            override = overrides.get(sid)
            if override is not None and override.kind is OverrideKind.READY:
                self.blocked.append(
                    Blocked(sid, ActionKind.DRAIN, reasons.override_reason(override))
                )
                continue
            if self.blind:
                message = f"pool {ps.name} is blind: not draining"
                self.blocked.append(
                    Blocked(sid, ActionKind.DRAIN, Reason(Rule.BLIND, message, evidence))
                )
                continue
            if self.partial:
                reason = reasons.inconsistent("draining", ps, self.partial, evidence)
                self.blocked.append(Blocked(sid, ActionKind.DRAIN, reason))
                continue
            if self.frozen:
                self.blocked.append(
                    Blocked(sid, ActionKind.DRAIN, reasons.starved("draining", evidence))
                )
                continue
            pool_budget = budget(size, self.out, ps)
            rule = pool_budget.check(ps)
            if rule is not None:
                evidence.update(pool_budget.evidence(ps))
                reason = Reason(rule, reasons.cap_message(rule, ps), evidence)
                self.blocked.append(Blocked(sid, ActionKind.DRAIN, reason))
                continue
            signal = ps.capacity_signal
            if signal is not None:
                if capacity is None:
                    capacity = Capacity(signal, ps.marks[signal].high, cur, observations)
                obs = observations[sid]
                refused = (
                    capacity.check(sid, obs) if kept is None else capacity.behind(sid, obs, kept)
                )
                if refused is not None:
                    kept = kept or sid
                    reason = Reason(refused.rule, refused.message, {**evidence, **refused.evidence})
                    self.blocked.append(Blocked(sid, ActionKind.DRAIN, reason))
                    continue
                evidence.update(capacity.drained(obs))
            level = _flap_level(st, ps, self.now)
            hold = hold_time(level, ps)
            evidence.update({"flap_level": level, "hold_s": hold})
            cur[sid] = st._replace(
                phase=step(st.phase, Event.FALL),
                drained_at=self.now,
                hold=hold,
                flap_level=level,
                good=0,
            )
            self.out += 1
            reason = Reason(Rule.FALL, reasons.fall_message(st, ps, evidence), evidence)
            self.actions.append(Action(sid, ActionKind.DRAIN, reason))

    def _reference(self, observations: Mapping[ServerId, Observation]) -> float | None:
        """The median weight of the pool's servers in rotation at their full weight."""
        in_service = Phase.IN_SERVICE
        return slowstart.reference_weight(
            self.full_weight(observations[sid])
            for sid, st in self.servers.items()
            if st.phase is in_service and st.fraction >= 1.0 and not observations[sid].external_out
        )

    def full_weight(self, obs: Observation) -> int:
        """The weight a server in rotation should have: its expected one under
        ``enforce_weights`` (rule 11), else the LB's (a ramp ends at its configured one)."""
        if self.ps.enforce_weights and obs.expected is not None:
            return obs.expected
        return obs.weight

    def at_full(self, sid: ServerId, obs: Observation, quiet: bool = False) -> Desired:
        """Rule 11: a server in rotation at its full share, under ``enforce_weights``. Its
        weight is its expected one; a live weight that differs is set back, with an action
        (``quiet``: none, as a ramp that ends now is no correction). A server out of rotation
        by someone else's hand, or without an expected weight, is left as it is."""
        expected = obs.expected
        if expected is None or obs.external_out:
            return _IN_SERVICE
        if obs.weight != expected and not quiet:
            reason = reasons.weight_enforced(self.ps, obs.weight, expected)
            self.actions.append(Action(sid, ActionKind.SET_WEIGHT, reason))
        return Desired(AdminState.READY, weight=expected)

    def _ramped(
        self, sid: ServerId, st: ServerState, obs: Observation, reference: float | None
    ) -> Desired:
        ps = self.ps
        enforced = ps.enforce_weights and obs.expected is not None
        if st.fraction >= 1.0:
            return self.at_full(sid, obs) if ps.enforce_weights else _IN_SERVICE
        self.wake_at(self.now + ps.slow_start * (1.0 - st.fraction))
        full = obs.expected if enforced and obs.expected is not None else obs.full_weight
        weight = slowstart.weight(st.fraction, full, reference, ps.slow_start_floor)
        if weight is None and enforced:
            weight = full  # an expected weight of 0: no ramp to climb
        return Desired(AdminState.READY, weight_fraction=st.fraction, weight=weight)

    def _check_caps(self, observations: Mapping[ServerId, Observation]) -> None:
        ps = self.ps
        if not self.manual:
            return
        size, out = len(self.servers), self.out
        for sid in self.partial:  # caps count only the servers every endpoint lists
            st = self.servers.get(sid)
            if st is None:
                continue
            size -= 1
            if st.phase is not Phase.IN_SERVICE or observations[sid].external_out:
                out -= 1
        pool_budget = budget(size, out - 1, ps)
        if pool_budget.check(ps) is None:
            return
        names = sorted(str(sid) for sid in self.manual)
        self.warnings.append(
            Reason(
                Rule.OVERRIDE_OVER_CAP,
                f"pool {ps.name}: {out} of {size} servers out, beyond its caps, because of "
                f"manual overrides on {', '.join(names)}",
                {**pool_budget.evidence(ps), "pool": ps.name, "out": out, "manual": names},
            )
        )


def out_desired(st: ServerState) -> Desired:
    if st.phase is Phase.MANUAL:
        admin = AdminState.MAINT if st.manual is OverrideKind.MAINT else AdminState.DRAIN
        return Desired(admin, manual=True)
    return _DRAINED


def _flap_level(st: ServerState, ps: PoolSettings, now: float) -> int:
    if st.restored_at is None:
        return st.flap_level
    since = now - st.restored_at
    if since < ps.flap_window:
        return st.flap_level + 1
    return max(0, st.flap_level - int(since // ps.flap_window))


def _newest(obs: Observation) -> Sample | None:
    """The newer of the server's probe sample and its LB sample: the evidence a drain cites."""
    lb, sample = obs.lb, obs.sample
    if lb is not None and (sample is None or lb.at > sample.at):
        return lb
    return sample
