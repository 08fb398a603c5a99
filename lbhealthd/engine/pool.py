"""One pool decided for one round: rules 2 to 8 and 10 of the package docstring.

A :class:`PoolPass` walks the pool's servers once (each looks at that server alone: streaks,
overrides, restores, slow start, hands off), then decides over the pool as a whole
(engine/whole_pool.py): the drains within the governor's caps, worst first, and the slow-start
weights, which depend on the weights of the others. A pool found blind is decided again by a
second pass, blind; the first pass is dropped whole, so nothing it found leaks into the
decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from lbhealthd.engine import reasons, slowstart
from lbhealthd.engine.hysteresis import Event, Phase, step
from lbhealthd.engine.state import Observation, ServerState
from lbhealthd.engine.verdict import MarkItems, Verdict, assess, judge_sorted, sorted_marks
from lbhealthd.engine.whole_pool import WholePool, out_desired
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Blocked,
    ByHand,
    Desired,
    Override,
    OverrideKind,
    ProbeOutcome,
    Reason,
    Released,
    Rule,
    Sample,
    ServerId,
)

_STREAK_CAP = 1_000_000
_READY = AdminState.READY
_IN_SERVICE = Desired(AdminState.READY)
_OUT_KINDS = (OverrideKind.DRAIN, OverrideKind.MAINT)
_FRESH = ServerState()
_V_FAILED, _V_OVERLOADED, _V_HEALTHY = Verdict.FAILED, Verdict.OVERLOADED, Verdict.HEALTHY


class PoolPass(WholePool):
    """What one pass over a pool decided: new states, desired states, actions, refusals."""

    __slots__ = ()

    # --- each server alone --------------------------------------------------------------------

    def each_server(
        self,
        ids: list[ServerId],
        previous: Mapping[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
    ) -> None:
        """Rules 2-4 and 7 for every server, and rule 1's count of failed probes."""
        cur, desired, candidates = self.servers, self.desired, self.candidates
        manual, ramping = self.manual, self.ramping
        marks = sorted_marks(self.ps.marks)
        blind, frozen = self.blind, self.frozen
        fresh = _FRESH
        in_service, manual_phase = Phase.IN_SERVICE, Phase.MANUAL
        ok = ProbeOutcome.OK
        fall = self.ps.fall
        enforce = self.ps.enforce_weights
        previous_get = previous.get
        probed = failed = unprobed = out = new = 0
        # This loop runs for every server every round: the common case (in service, full
        # weight, no override, no hand change) takes no call it does not need.
        for sid in ids:
            obs = observations[sid]
            sample = obs.sample
            st = previous_get(sid)
            if st is None:
                st = fresh
                new += 1
            override = overrides.get(sid) if overrides else None
            hand = obs.hand
            ramped = st.fraction < 1.0 and hand is None  # a ramp that ends now is no correction
            if hand is not None:
                st = self._hand(sid, st, hand, obs.weight)
            if sample is not None:
                last = st.last_sample_at
                if frozen:
                    if last is None or sample.at > last:
                        st = st._replace(last_sample_at=sample.at)  # seen, and no evidence
                else:
                    # rule 1's count: probes of servers that are not out for another reason
                    if not (
                        obs.external_out
                        or st.phase is manual_phase
                        or (override is not None and override.kind in _OUT_KINDS)
                    ):
                        probed += 1
                        if sample.outcome is not ok:
                            failed += 1
                    if last is None or sample.at > last:
                        st = _observe(st, sample, marks, blind)
                        if st.fraction < 1.0 and st.phase is in_service:
                            st = self._ramp(sid, st, sample, marks)
            elif not (
                frozen
                or obs.external_out
                or st.phase is manual_phase
                or (override is not None and override.kind in _OUT_KINDS)
            ):
                unprobed += 1  # rule 1: no sample yet, so not known to be well
            lb = obs.lb
            if lb is not None and (st.last_lb_at is None or lb.at > st.last_lb_at):
                st = self._lb_sample(sid, st, lb, marks)
            if override is not None or st.phase is not in_service:
                st = self._override(sid, st, override)
                if st.phase is Phase.DRAINED:
                    st = self._restore(sid, st)
            cur[sid] = st
            if st.phase is in_service:
                if obs.external_out:
                    out += 1
                elif st.bad >= fall and not (hand is not None and hand.admin is _READY):
                    candidates.append(sid)  # its desired state waits for rule 5
                    continue
                if st.fraction >= 1.0:
                    desired[sid] = self.at_full(sid, obs, ramped) if enforce else _IN_SERVICE
                else:
                    ramping.append(sid)  # its weight waits for the pool's (rule 6)
            else:
                out += 1
                if st.phase is manual_phase:
                    manual.append(sid)
                desired[sid] = out_desired(st)
        self.probed, self.failed, self.unprobed = probed, failed, unprobed
        self.out, self.new = out, new
        # The order of the servers must not show in the decision.
        self.actions.sort(key=_by_server)
        self.blocked.sort(key=_by_server)
        self.released.sort(key=_by_server)

    def _hand(self, sid: ServerId, st: ServerState, hand: ByHand, weight: int) -> ServerState:
        """Rule 7: an operator changed by hand what lbhealthd had set; let go of it (a server
        put back in rotation by hand stays in this round, and is kept in by an override)."""
        if hand.admin is not None:
            reason = reasons.hand_state(hand.admin, st.phase.value)
            self.released.append(Released(sid, reason, keep_in=hand.admin is _READY))
            return st._replace(
                phase=step(st.phase, Event.HAND_CHANGE),
                manual=None,
                drained_at=None,
                hold=0.0,
                bad=0,
                good=0,
                fraction=1.0,
                ramp_at=None,
            )
        self.released.append(Released(sid, reasons.hand_weight(weight, st.fraction)))
        return st._replace(fraction=1.0, ramp_at=None)

    def _override(self, sid: ServerId, st: ServerState, override: Override | None) -> ServerState:
        if override is not None and override.kind in _OUT_KINDS:
            if st.phase is Phase.MANUAL and st.manual is override.kind:
                return st
            kind = ActionKind.DRAIN if override.kind is OverrideKind.DRAIN else ActionKind.MAINT
            self.actions.append(Action(sid, kind, reasons.override_reason(override)))
            return st._replace(
                phase=step(st.phase, Event.OVERRIDE_OUT),
                manual=override.kind,
                drained_at=self.now if st.phase is Phase.IN_SERVICE else st.drained_at,
            )
        if override is not None and override.kind is OverrideKind.READY:
            if st.phase is Phase.IN_SERVICE:
                return st
            self.actions.append(Action(sid, ActionKind.RESTORE, reasons.override_reason(override)))
            return self._back_in(st._replace(phase=step(st.phase, Event.OVERRIDE_READY)))
        if st.phase is Phase.MANUAL:
            # The override is gone: the daemon owns the server now and restores it only
            # through the RISE rule, without a further hold.
            return st._replace(
                phase=step(st.phase, Event.OVERRIDE_ENDED),
                manual=None,
                drained_at=self.now,
                hold=0.0,
            )
        return st

    def _restore(self, sid: ServerId, st: ServerState) -> ServerState:
        ps = self.ps
        if st.phase is not Phase.DRAINED or st.good < ps.rise:
            return st
        if self.blind:
            self._refuse(
                sid, ActionKind.RESTORE, Rule.BLIND, f"pool {ps.name} is blind: not restoring"
            )
            return st
        if self.partial:
            reason = reasons.inconsistent("restoring", ps, self.partial, {"good": st.good})
            self.blocked.append(Blocked(sid, ActionKind.RESTORE, reason))
            return st
        drained_at = st.drained_at if st.drained_at is not None else self.now
        held = self.now - drained_at
        # A hold set before a reload that lowered flap_max_hold ends at the new cap, as it
        # would after a restart (engine/persistence.py clamps it there).
        hold = min(st.hold, ps.flap_max_hold)
        evidence: dict[str, object] = {
            "good": st.good,
            "rise": ps.rise,
            "held_s": round(held, 3),
            "hold_s": hold,
            "flap_level": st.flap_level,
        }
        if held < hold:
            message = f"healthy, but out only {held:.1f}s of {hold:g}s"
            self.blocked.append(
                Blocked(sid, ActionKind.RESTORE, Reason(Rule.HOLD, message, evidence))
            )
            self.wake_at(drained_at + hold)
            return st
        if self.frozen:
            self.blocked.append(
                Blocked(sid, ActionKind.RESTORE, reasons.starved("restoring", evidence))
            )
            return st
        message = f"{st.good} healthy samples in a row (rise {ps.rise})"
        self.actions.append(Action(sid, ActionKind.RESTORE, Reason(Rule.RISE, message, evidence)))
        return self._back_in(st._replace(phase=step(st.phase, Event.RISE)))

    def _back_in(self, st: ServerState) -> ServerState:
        ps = self.ps
        return st._replace(
            manual=None,
            drained_at=None,
            hold=0.0,
            restored_at=self.now,
            bad=0,
            fraction=ps.slow_start_floor if ps.slow_start > 0 else 1.0,
            ramp_at=self.now,
        )

    def _ramp(
        self, sid: ServerId, st: ServerState, sample: Sample, marks: MarkItems
    ) -> ServerState:
        """Rule 6: the share rises with time only while samples are healthy, holds in the
        band, and is halved (down to the floor) by a bad sample instead of counting toward a
        drain. At the floor, bad samples count as usual."""
        ps = self.ps
        judged = judge_sorted(sample, marks)
        since = self.now - st.ramp_at if st.ramp_at is not None else 0.0
        if ps.probe_interval is not None:
            since = min(since, 2.0 * ps.probe_interval)  # a gap without samples is not health
        if judged.verdict is Verdict.HEALTHY:
            return st._replace(fraction=slowstart.step(st.fraction, since, ps), ramp_at=self.now)
        floor = ps.slow_start_floor
        if not judged.bad or self.blind or st.fraction <= floor + 1e-9:
            return st._replace(ramp_at=self.now)
        fraction = max(floor, st.fraction / 2.0)
        reason = reasons.step_down(judged, st.fraction, fraction)
        self.actions.append(Action(sid, ActionKind.STEP_DOWN, reason))
        return st._replace(fraction=fraction, ramp_at=self.now, bad=0)

    def _lb_sample(
        self, sid: ServerId, st: ServerState, lb: Sample, marks: MarkItems
    ) -> ServerState:
        """Rule 2, the LB's counters: a sample of them over a high mark counts as an overloaded
        sample (a bad one while the server ramps up); any other is no evidence, since the
        counters alone cannot say a server is well (its probe says that). While the daemon
        is starved they are still evidence: the LB measured them, not the daemon."""
        verdict, ratio = assess(lb, marks)
        if verdict is not _V_OVERLOADED:
            return st._replace(last_lb_at=lb.at)
        ramping = st.fraction < 1.0 and st.phase is Phase.IN_SERVICE
        if ramping and not self.blind and st.fraction > self.ps.slow_start_floor + 1e-9:
            return self._ramp(sid, st, lb, marks)._replace(last_lb_at=lb.at)  # a step-down
        bad = st.bad + 1 if st.bad < _STREAK_CAP else st.bad
        return st._replace(bad=bad, good=0, verdict=verdict, ratio=ratio, last_lb_at=lb.at)

    def _refuse(self, sid: ServerId, kind: ActionKind, rule: Rule, message: str) -> None:
        self.blocked.append(Blocked(sid, kind, Reason(rule, message, {})))


def _observe(st: ServerState, sample: Sample, marks: MarkItems, blind: bool) -> ServerState:
    """The state after judging ``sample``, a sample newer than any ``st`` has seen."""
    verdict, ratio = assess(sample, marks)
    bad, good = st.bad, st.good
    if verdict is _V_HEALTHY:
        bad, good = 0, good + 1 if good < _STREAK_CAP else good
    elif verdict is _V_OVERLOADED or (verdict is _V_FAILED and not blind):
        # (while blind a failed probe is no evidence against the server)
        bad, good = bad + 1 if bad < _STREAK_CAP else bad, 0
    return st.judged(bad, good, sample.at, verdict, ratio)


def _by_server(item: Action | Blocked | Released) -> ServerId:
    return item.server
