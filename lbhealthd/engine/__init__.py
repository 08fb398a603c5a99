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
    MarkItems,
    Verdict,
    assess,
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
    ProbeOutcome,
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
_FRESH = ServerState()


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
    # Grouped in the caller's order, not sorted: sorting 10,000 ids costs more than the rest
    # of the round. What the caller sees does not depend on that order: actions and blocked
    # changes are sorted per pool below, and drains are ranked by a total order.
    known = settings.pools
    pools: dict[str, list[ServerId]] = {}
    for sid in observations:
        pool = sid[0]
        if pool in known:
            group = pools.get(pool)
            if group is None:
                group = pools[pool] = []
            group.append(sid)
    round_ = _Round(now)
    servers: dict[ServerId, ServerState] = {}
    for pool in sorted(pools):
        servers.update(
            round_.pool(known[pool], pools[pool], state.servers, observations, overrides)
        )
    return EngineState(servers=servers), round_.decision()


class _Pass:
    """What one pass over a pool's servers found (see ``_Round._servers``)."""

    __slots__ = ("candidates", "desired", "failed", "manual", "out", "probed", "servers")

    def __init__(self) -> None:
        self.servers: dict[ServerId, ServerState] = {}
        self.desired: dict[ServerId, Desired] = {}
        self.candidates: list[ServerId] = []  # in service with ``fall`` bad samples (rule 5)
        self.manual: list[ServerId] = []  # out by an operator's override
        self.probed = self.failed = 0  # rule 1's count
        self.out = 0  # servers out of rotation, whatever took them out


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
        # Rules 2-4 in one pass that also counts the failed probes of rule 1. A blind pool is
        # rare: its pass is thrown away and made again, blind.
        undo = (len(self.actions), len(self.blocked), self.next_wake)
        done = self._servers(ps, ids, previous, observations, overrides, blind=False)
        blind = is_blind(done.probed, done.failed, ps)
        if blind:
            del self.actions[undo[0] :], self.blocked[undo[1] :]
            self.next_wake = undo[2]
            self._blind(ps, done.probed, done.failed)
            done = self._servers(ps, ids, previous, observations, overrides, blind=True)
        # The order of the servers must not show in the decision.
        self.actions[undo[0] :] = sorted(self.actions[undo[0] :], key=_by_server)
        self.blocked[undo[1] :] = sorted(self.blocked[undo[1] :], key=_by_server)
        cur, desired, candidates = done.servers, done.desired, done.candidates
        out = self._drains(ps, candidates, cur, observations, overrides, blind, done.out)
        for sid in candidates:
            desired[sid] = self._desired(cur[sid], ps)
        self.desired.update(desired)
        self._check_caps(ps, len(ids), done.manual, out)
        return cur

    def _servers(
        self,
        ps: PoolSettings,
        ids: list[ServerId],
        previous: Mapping[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
        blind: bool,
    ) -> _Pass:
        """Rules 2-4 for every server of the pool (each looks at that server alone)."""
        done = _Pass()
        cur, desired, candidates, manual = done.servers, done.desired, done.candidates, done.manual
        marks = sorted_marks(ps.marks)
        fresh = _FRESH
        in_service, manual_phase = Phase.IN_SERVICE, Phase.MANUAL
        ok = ProbeOutcome.OK
        fall = ps.fall
        previous_get = previous.get
        probed = failed = out = 0
        # This loop runs for every server every round: the common case (in service, full
        # weight, no override) takes no call it does not need.
        for sid in ids:
            obs = observations[sid]
            sample = obs.sample
            prev = previous_get(sid)
            st = fresh if prev is None else prev
            override = overrides.get(sid) if overrides else None
            if sample is not None:
                # rule 1's count: probes of servers that are not out for another reason
                if not (
                    obs.external_out
                    or st.phase is manual_phase
                    or (override is not None and override.kind in _OUT_KINDS)
                ):
                    probed += 1
                    if sample.outcome is not ok:
                        failed += 1
                last = st.last_sample_at
                if last is None or sample.at > last:
                    st = _observe(st, sample, marks, blind)
                    if st.fraction < 1.0 and st.phase is in_service:
                        st = self._ramp(sid, st, sample, marks, ps, blind)
            if override is not None or st.phase is not in_service:
                st = self._override(sid, st, override, ps)
                if st.phase is Phase.DRAINED:
                    st = self._restore(sid, st, ps, blind)
            cur[sid] = st
            if st.phase is in_service:
                if obs.external_out:
                    out += 1
                elif st.bad >= fall:
                    candidates.append(sid)  # its desired state waits for rule 5
                    continue
                desired[sid] = _IN_SERVICE if st.fraction >= 1.0 else self._desired(st, ps)
            else:
                out += 1
                if st.phase is manual_phase:
                    manual.append(sid)
                desired[sid] = self._desired(st, ps)
        done.probed, done.failed, done.out = probed, failed, out
        return done

    def _blind(self, ps: PoolSettings, probed: int, failed: int) -> None:
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

    def _override(
        self, sid: ServerId, st: ServerState, override: Override | None, ps: PoolSettings
    ) -> ServerState:
        if override is not None and override.kind in _OUT_KINDS:
            if st.phase is Phase.MANUAL and st.manual is override.kind:
                return st
            kind = ActionKind.DRAIN if override.kind is OverrideKind.DRAIN else ActionKind.MAINT
            self.actions.append(Action(sid, kind, _override_reason(override)))
            return st._replace(
                phase=step(st.phase, Event.OVERRIDE_OUT),
                manual=override.kind,
                drained_at=self.now if st.phase is Phase.IN_SERVICE else st.drained_at,
            )
        if override is not None and override.kind is OverrideKind.READY:
            if st.phase is Phase.IN_SERVICE:
                return st
            self.actions.append(Action(sid, ActionKind.RESTORE, _override_reason(override)))
            return _back_in(st._replace(phase=step(st.phase, Event.OVERRIDE_READY)), self.now, ps)
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
        return _back_in(st._replace(phase=step(st.phase, Event.RISE)), self.now, ps)

    def _drains(
        self,
        ps: PoolSettings,
        candidates: list[ServerId],
        cur: dict[ServerId, ServerState],
        observations: Mapping[ServerId, Observation],
        overrides: Mapping[ServerId, Override],
        blind: bool,
        out: int,
    ) -> int:
        """Rule 5 over the candidates (in service, ``fall`` bad samples); returns the new
        number of servers out."""
        size = len(cur)
        candidates.sort(key=lambda sid: (-cur[sid].ratio, -cur[sid].bad, sid))
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
            pool_budget = budget(size, out, ps)
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
            cur[sid] = st._replace(
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
        return out

    def _check_caps(self, ps: PoolSettings, size: int, manual: list[ServerId], out: int) -> None:
        if not manual:
            return
        pool_budget = budget(size, out - 1, ps)
        if pool_budget.check(ps) is None:
            return
        names = sorted(str(sid) for sid in manual)
        self.warnings.append(
            Reason(
                Rule.OVERRIDE_OVER_CAP,
                f"pool {ps.name}: {out} of {size} servers out, beyond its caps, because of "
                f"manual overrides on {', '.join(names)}",
                {**pool_budget.evidence(ps), "pool": ps.name, "out": out, "manual": names},
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
        self,
        sid: ServerId,
        st: ServerState,
        sample: Sample | None,
        marks: MarkItems,
        ps: PoolSettings,
        blind: bool,
    ) -> ServerState:
        """Slow start, gated by health: the weight share rises with time only while samples
        are healthy, holds in the band, and is halved (down to the floor) by an overloaded
        sample instead of counting toward a drain. At the floor, bad samples count as usual."""
        assert sample is not None  # only called for a server with a new sample
        judged = judge_sorted(sample, marks)
        since = self.now - st.ramp_at if st.ramp_at is not None else 0.0
        if judged.verdict is Verdict.HEALTHY:
            fraction = slow_start_step(st.fraction, since, ps)
            return st._replace(fraction=fraction, ramp_at=self.now)
        floor = ps.slow_start_floor
        if not judged.bad or blind or st.fraction <= floor + 1e-9:
            return st._replace(ramp_at=self.now)
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
        return st._replace(fraction=fraction, ramp_at=self.now, bad=0)


_new_state = tuple.__new__  # ServerState from a full tuple of fields, without the keywords


_V_FAILED, _V_OVERLOADED, _V_HEALTHY = Verdict.FAILED, Verdict.OVERLOADED, Verdict.HEALTHY


def _observe(st: ServerState, sample: Sample, marks: MarkItems, blind: bool) -> ServerState:
    """The state after judging ``sample``, a sample newer than any ``st`` has seen."""
    verdict, ratio = assess(sample, marks)
    bad, good = st[1], st[2]
    if verdict is _V_HEALTHY:
        bad, good = 0, good + 1 if good < _STREAK_CAP else good
    elif verdict is _V_OVERLOADED or (verdict is _V_FAILED and not blind):
        # (while blind a failed probe is no evidence against the server)
        bad, good = bad + 1 if bad < _STREAK_CAP else bad, 0
    # Built as a tuple: this runs for every server every round.
    return _new_state(
        ServerState,
        (
            st[0],
            bad,
            good,
            sample.at,
            verdict,
            ratio,
            st[6],
            st[7],
            st[8],
            st[9],
            st[10],
            st[11],
            st[12],
        ),
    )


def _by_server(item: Action | Blocked) -> ServerId:
    return item.server


def _back_in(st: ServerState, now: float, ps: PoolSettings) -> ServerState:
    fraction = ps.slow_start_floor if ps.slow_start > 0 else 1.0
    return st._replace(
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
