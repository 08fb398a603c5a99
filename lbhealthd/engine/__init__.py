"""The decision engine: pure, deterministic, with time passed in.

    decide(state, observations, overrides, settings, now) -> (new state, Decision)

Rules, per pool, in the order they apply each round:
1. Blind: if at least ``blind_threshold`` of the pool's latest probes failed, the pool is
   frozen (no drains, no restores; failed samples count neither way) and a warning says so.
2. Samples: each server's newest sample is judged once (engine/verdict.py). Overloaded or failed
   samples extend the bad streak and reset the good one; healthy samples the reverse; samples in
   the band between the marks change neither (the hysteresis).
3. Overrides win: a drain or maint override takes the server out whatever the caps (with a
   warning when the pool goes beyond them); a ready override keeps it in; when an override ends
   the daemon owns the server again and restores it only through rule 4.
4. Restore: a server the daemon drained comes back after ``rise`` healthy samples and once it has
   been out for its hold time, ``min_drain × flap_backoff^n`` where n grows with each re-drain
   within ``flap_window`` of a restore and decays with each window spent in service.
5. Drain: a server with ``fall`` consecutive bad samples goes out if the governor allows it
   (engine/governor.py); candidates are taken worst first: failed probes, then the largest
   value/high ratio, then the longer bad streak, then by name. Refused ones are reported as
   blocked with the rule and the evidence.
6. Slow start, gated by health: a server back in rotation gets a weight share rising from
   ``slow_start_floor`` to 1 over ``slow_start`` seconds of healthy samples; band samples hold
   it, and a bad sample halves it (a step-down) instead of counting toward a drain until the
   share is at the floor.

No asyncio, no I/O, no clock reads, no logging: same input, same output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from lbhealthd.engine.governor import (
    budget,
    hold_time,
    is_blind,
    slow_start_step,
)
from lbhealthd.engine.hysteresis import Event, Phase, step
from lbhealthd.engine.settings import Marks, PoolSettings, Settings
from lbhealthd.engine.state import EngineState, Observation, ServerState
from lbhealthd.engine.verdict import (
    Judgement,
    MarkItems,
    Verdict,
    judge,
    judge_sorted,
    sorted_marks,
)
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Blocked,
    Decision,
    Desired,
    Override,
    OverrideKind,
    Reason,
    Rule,
    Sample,
    ServerId,
)

__all__ = [
    "EngineState",
    "Marks",
    "Observation",
    "PoolSettings",
    "ServerState",
    "Settings",
    "Verdict",
    "decide",
    "judge",
]

_STREAK_CAP = 1_000_000
_IN_SERVICE = Desired(AdminState.READY)
_DRAINED = Desired(AdminState.DRAIN)
_OUT_KINDS = (OverrideKind.DRAIN, OverrideKind.MAINT)


def decide(
    state: EngineState,
    observations: Mapping[ServerId, Observation],
    overrides: Mapping[ServerId, Override],
    settings: Settings,
    now: float,
) -> tuple[EngineState, Decision]:
    """Decide one round for every pool in ``settings``. See the module docstring for the rules.

    Servers absent from ``observations`` are forgotten (they left the LB); servers of pools not
    in ``settings`` are ignored.
    """
    pools: dict[str, list[ServerId]] = {}
    for sid in sorted(observations):
        if sid.pool in settings.pools:
            pools.setdefault(sid.pool, []).append(sid)
    round_ = _Round(now)
    servers: dict[ServerId, ServerState] = {}
    for pool, ids in pools.items():
        servers.update(
            round_.pool(settings.pools[pool], ids, state.servers, observations, overrides)
        )
    return EngineState(servers=servers), round_.decision()


class _Round:
    """Accumulates one round's decision across pools."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.desired: dict[ServerId, Desired] = {}
        self.actions: list[Action] = []
        self.blocked: list[Blocked] = []
        self.warnings: list[Reason] = []
        self.blind: set[str] = set()
        self.next_wake: float | None = None

    def decision(self) -> Decision:
        return Decision(
            desired=self.desired,
            actions=tuple(self.actions),
            blocked=tuple(self.blocked),
            warnings=tuple(self.warnings),
            blind_pools=frozenset(self.blind),
            next_wake=self.next_wake,
        )

    def wake_at(self, when: float) -> None:
        if self.next_wake is None or when < self.next_wake:
            self.next_wake = when

    def pool(
        self,
        ps: PoolSettings,
        ids: list[ServerId],
        previous: Mapping[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
    ) -> dict[ServerId, ServerState]:
        blind = self._blind(ps, ids, previous, observations, overrides)
        cur: dict[ServerId, ServerState] = {}
        marks = sorted_marks(ps.marks)
        fresh = ServerState()
        in_service = Phase.IN_SERVICE
        # One pass per server for rules 2-4 (they look at that server alone); this loop runs
        # for every server every round, so the common case takes no call it does not need.
        for sid in ids:
            st, judged = _observe(previous.get(sid, fresh), observations[sid].sample, marks, blind)
            if judged is not None and st.fraction < 1.0 and st.phase is in_service:
                st = self._ramp(sid, st, judged, ps, blind)
            override = overrides.get(sid) if overrides else None
            if override is not None or st.phase is not in_service:
                st = self._override(sid, st, override, ps)
                if st.phase is Phase.DRAINED:
                    st = self._restore(sid, st, ps, blind)
            cur[sid] = st
        self._drains(ps, ids, cur, observations, overrides, blind)
        self._check_caps(ps, ids, cur, observations)
        desired = self.desired
        for sid in ids:
            st = cur[sid]
            if st.phase is in_service and st.fraction >= 1.0:
                desired[sid] = _IN_SERVICE
            else:
                desired[sid] = self._desired(st, ps)
        return cur

    def _blind(
        self,
        ps: PoolSettings,
        ids: list[ServerId],
        previous: Mapping[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
    ) -> bool:
        probed = failed = 0
        for sid in ids:
            obs = observations[sid]
            override = overrides.get(sid)
            prev = previous.get(sid)
            if obs.sample is None or obs.external_out:
                continue
            if (override and override.kind in _OUT_KINDS) or (prev and prev.phase is Phase.MANUAL):
                continue
            probed += 1
            failed += not obs.sample.ok
        if not is_blind(probed, failed, ps):
            return False
        self.blind.add(ps.name)
        self.warnings.append(
            Reason(
                Rule.BLIND,
                f"pool {ps.name}: {failed} of {probed} probes failed at once; the daemon is "
                "likely blind (its own network or host), so it drains nothing",
                {
                    "pool": ps.name,
                    "failed": failed,
                    "probed": probed,
                    "blind_threshold": ps.blind_threshold,
                },
            )
        )
        return True

    def _override(
        self, sid: ServerId, st: ServerState, override: Override | None, ps: PoolSettings
    ) -> ServerState:
        if override is not None and override.kind in _OUT_KINDS:
            if st.phase is Phase.MANUAL and st.manual is override.kind:
                return st
            kind = ActionKind.DRAIN if override.kind is OverrideKind.DRAIN else ActionKind.MAINT
            self.actions.append(Action(sid, kind, _override_reason(override)))
            return replace(
                st,
                phase=step(st.phase, Event.OVERRIDE_OUT),
                manual=override.kind,
                drained_at=self.now if st.phase is Phase.IN_SERVICE else st.drained_at,
            )
        if override is not None and override.kind is OverrideKind.READY:
            if st.phase is Phase.IN_SERVICE:
                return st
            self.actions.append(Action(sid, ActionKind.RESTORE, _override_reason(override)))
            return _back_in(replace(st, phase=step(st.phase, Event.OVERRIDE_READY)), self.now, ps)
        if st.phase is Phase.MANUAL:
            # The override is gone: the daemon owns the server now and restores it only
            # through the RISE rule, without a further hold.
            return replace(
                st,
                phase=step(st.phase, Event.OVERRIDE_ENDED),
                manual=None,
                drained_at=self.now,
                hold=0.0,
            )
        return st

    def _restore(
        self, sid: ServerId, st: ServerState, ps: PoolSettings, blind: bool
    ) -> ServerState:
        if st.phase is not Phase.DRAINED or st.good < ps.rise:
            return st
        if blind:
            self.blocked.append(
                Blocked(
                    sid,
                    ActionKind.RESTORE,
                    Reason(Rule.BLIND, f"pool {ps.name} is blind: not restoring", {}),
                )
            )
            return st
        drained_at = st.drained_at if st.drained_at is not None else self.now
        held = self.now - drained_at
        evidence: dict[str, object] = {
            "good": st.good,
            "rise": ps.rise,
            "held_s": round(held, 3),
            "hold_s": st.hold,
            "flap_level": st.flap_level,
        }
        if held < st.hold:
            self.blocked.append(
                Blocked(
                    sid,
                    ActionKind.RESTORE,
                    Reason(
                        Rule.HOLD, f"healthy, but out only {held:.1f}s of {st.hold:g}s", evidence
                    ),
                )
            )
            self.wake_at(drained_at + st.hold)
            return st
        self.actions.append(
            Action(
                sid,
                ActionKind.RESTORE,
                Reason(Rule.RISE, f"{st.good} healthy samples in a row (rise {ps.rise})", evidence),
            )
        )
        return _back_in(replace(st, phase=step(st.phase, Event.RISE)), self.now, ps)

    def _drains(
        self,
        ps: PoolSettings,
        ids: list[ServerId],
        cur: dict[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
        blind: bool,
    ) -> None:
        candidates = [
            sid
            for sid in ids
            if cur[sid].phase is Phase.IN_SERVICE
            and cur[sid].bad >= ps.fall
            and not observations[sid].external_out
        ]
        candidates.sort(key=lambda sid: (-cur[sid].ratio, -cur[sid].bad, sid))
        out = _count_out(ids, cur, observations)
        for sid in candidates:
            st = cur[sid]
            evidence = _drain_evidence(st, observations[sid].sample, ps)
            override = overrides.get(sid)
            if override is not None and override.kind is OverrideKind.READY:
                self.blocked.append(Blocked(sid, ActionKind.DRAIN, _override_reason(override)))
                continue
            if blind:
                self.blocked.append(
                    Blocked(
                        sid,
                        ActionKind.DRAIN,
                        Reason(Rule.BLIND, f"pool {ps.name} is blind: not draining", evidence),
                    )
                )
                continue
            pool_budget = budget(len(ids), out, ps)
            rule = pool_budget.check(ps)
            if rule is not None:
                evidence.update(pool_budget.evidence(ps))
                self.blocked.append(
                    Blocked(
                        sid,
                        ActionKind.DRAIN,
                        Reason(rule, _cap_message(rule, ps), evidence),
                    )
                )
                continue
            level = _flap_level(st, ps, self.now)
            hold = hold_time(level, ps)
            evidence.update({"flap_level": level, "hold_s": hold})
            cur[sid] = replace(
                st,
                phase=step(st.phase, Event.FALL),
                drained_at=self.now,
                hold=hold,
                flap_level=level,
                good=0,
            )
            out += 1
            self.actions.append(
                Action(
                    sid,
                    ActionKind.DRAIN,
                    Reason(Rule.FALL, _fall_message(st, ps, evidence), evidence),
                )
            )

    def _check_caps(
        self,
        ps: PoolSettings,
        ids: list[ServerId],
        cur: dict[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
    ) -> None:
        manual = [str(sid) for sid in ids if cur[sid].phase is Phase.MANUAL]
        if not manual:
            return
        out = _count_out(ids, cur, observations)
        pool_budget = budget(len(ids), out - 1, ps)
        if pool_budget.check(ps) is None:
            return
        self.warnings.append(
            Reason(
                Rule.OVERRIDE_OVER_CAP,
                f"pool {ps.name}: {out} of {len(ids)} servers out, beyond its caps, because of "
                f"manual overrides on {', '.join(manual)}",
                {**pool_budget.evidence(ps), "pool": ps.name, "out": out, "manual": manual},
            )
        )

    def _desired(self, st: ServerState, ps: PoolSettings) -> Desired:
        if st.phase is Phase.MANUAL:
            admin = AdminState.MAINT if st.manual is OverrideKind.MAINT else AdminState.DRAIN
            return Desired(admin, manual=True)
        if st.phase is Phase.DRAINED:
            return _DRAINED
        if st.fraction < 1.0:
            self.wake_at(self.now + ps.slow_start * (1.0 - st.fraction))
            return Desired(AdminState.READY, weight_fraction=st.fraction)
        return _IN_SERVICE

    def _ramp(
        self, sid: ServerId, st: ServerState, judged: Judgement, ps: PoolSettings, blind: bool
    ) -> ServerState:
        """Slow start, gated by health: the weight share rises with time only while samples
        are healthy, holds in the band, and is halved (down to the floor) by an overloaded
        sample instead of counting toward a drain. At the floor, bad samples count as usual."""
        since = self.now - st.ramp_at if st.ramp_at is not None else 0.0
        if judged.verdict is Verdict.HEALTHY:
            fraction = slow_start_step(st.fraction, since, ps)
            return replace(st, fraction=fraction, ramp_at=self.now)
        floor = ps.slow_start_floor
        if not judged.bad or blind or st.fraction <= floor + 1e-9:
            return replace(st, ramp_at=self.now)
        fraction = max(floor, st.fraction / 2.0)
        self.actions.append(
            Action(
                sid,
                ActionKind.STEP_DOWN,
                Reason(
                    Rule.STEP_DOWN,
                    f"{judged.verdict.value} while its weight ramps up: weight share "
                    f"{st.fraction:.0%} -> {fraction:.0%} instead of a drain",
                    {
                        "verdict": judged.verdict.value,
                        "from": round(st.fraction, 3),
                        "to": round(fraction, 3),
                        "over": list(judged.over),
                    },
                ),
            )
        )
        return replace(st, fraction=fraction, ramp_at=self.now, bad=0)


def _observe(
    st: ServerState, sample: Sample | None, marks: MarkItems, blind: bool
) -> tuple[ServerState, Judgement | None]:
    if sample is None or (st.last_sample_at is not None and sample.at <= st.last_sample_at):
        return st, None
    judgement = judge_sorted(sample, marks)
    bad, good = st.bad, st.good
    if judgement.verdict is Verdict.FAILED and blind:
        pass  # discounted: while blind a failed probe is no evidence against the server
    elif judgement.bad:
        bad, good = min(bad + 1, _STREAK_CAP), 0
    elif judgement.verdict is Verdict.HEALTHY:
        bad, good = 0, min(good + 1, _STREAK_CAP)
    # Built field by field rather than with dataclasses.replace: this runs for every server
    # every round.
    updated = ServerState(
        st.phase,
        bad,
        good,
        sample.at,
        judgement.verdict,
        judgement.ratio,
        st.drained_at,
        st.hold,
        st.flap_level,
        st.restored_at,
        st.manual,
        st.fraction,
        st.ramp_at,
    )
    return updated, judgement


def _back_in(st: ServerState, now: float, ps: PoolSettings) -> ServerState:
    fraction = ps.slow_start_floor if ps.slow_start > 0 else 1.0
    return replace(
        st,
        manual=None,
        drained_at=None,
        hold=0.0,
        restored_at=now,
        bad=0,
        fraction=fraction,
        ramp_at=now,
    )


def _count_out(
    ids: list[ServerId],
    cur: Mapping[ServerId, ServerState],
    observations: Mapping[ServerId, Observation],
) -> int:
    return sum(
        1 for sid in ids if cur[sid].phase is not Phase.IN_SERVICE or observations[sid].external_out
    )


def _flap_level(st: ServerState, ps: PoolSettings, now: float) -> int:
    if st.restored_at is None:
        return st.flap_level
    since = now - st.restored_at
    if since < ps.flap_window:
        return st.flap_level + 1
    return max(0, st.flap_level - int(since // ps.flap_window))


def _override_reason(override: Override) -> Reason:
    return Reason(
        Rule.OVERRIDE,
        f"{override.kind.value} override by {override.who}: {override.reason}",
        {
            "who": override.who,
            "reason": override.reason,
            "kind": override.kind.value,
            "expires_at": override.expires_at,
        },
    )


def _drain_evidence(st: ServerState, sample: Sample | None, ps: PoolSettings) -> dict[str, object]:
    evidence: dict[str, object] = {
        "bad": st.bad,
        "fall": ps.fall,
        "verdict": st.verdict.value if st.verdict else None,
    }
    if sample is not None:
        evidence["outcome"] = sample.outcome.value
        evidence["signals"] = dict(sample.signals)
        if sample.detail:
            evidence["detail"] = sample.detail
    return evidence


def _fall_message(st: ServerState, ps: PoolSettings, evidence: Mapping[str, object]) -> str:
    what = "failed or overloaded" if st.verdict is Verdict.FAILED else "overloaded"
    detail = evidence.get("detail") or _over_marks(evidence.get("signals"), ps.marks)
    return (
        f"{st.bad} {what} samples in a row (fall {ps.fall}){': ' + str(detail) if detail else ''}"
    )


def _over_marks(signals: object, marks: Mapping[str, Marks]) -> str:
    if not isinstance(signals, dict):
        return ""
    parts = [
        f"{name} {signals[name]:g} >= {mark.high:g}"
        for name, mark in sorted(marks.items())
        if name in signals and signals[name] >= mark.high
    ]
    return ", ".join(parts)


def _cap_message(rule: Rule, ps: PoolSettings) -> str:
    if rule is Rule.MAX_DRAINED:
        return (
            f"overloaded, but draining it would exceed max_drained {ps.max_drained:.0%} of the pool"
        )
    return f"overloaded, but draining it would leave fewer than min_in_service {ps.min_in_service}"
