"""The words and evidence of the engine's reasons: one place for what a decision says."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from lbhealthd.engine.settings import Marks, PoolSettings
from lbhealthd.engine.state import ServerState
from lbhealthd.engine.verdict import Judgement, Verdict
from lbhealthd.model import AdminState, Override, Reason, Rule, Sample, ServerId


def override_reason(override: Override) -> Reason:
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


def blind_warning(ps: PoolSettings, probed: int, failed: int, unprobed: int, size: int) -> Reason:
    """``probed`` counts the pool's servers in rotation with a sample, ``unprobed`` those
    without one yet (taken as failed); the rest of ``size`` is out of rotation, named as not
    counted, so that the figures add up to the pool."""
    others = size - probed - unprobed
    asides = []
    if unprobed:
        asides.append(f"{unprobed} more with no sample yet, taken as failed")
    if others > 0:
        asides.append(f"{others} more out of rotation, not counted")
    aside = f" ({'; '.join(asides)})" if asides else ""
    return Reason(
        Rule.BLIND,
        f"pool {ps.name}: {failed} of the {probed} probes of servers in rotation failed at "
        f"once{aside}; the daemon is likely blind (its own network or host), so it drains "
        "nothing",
        {
            "pool": ps.name,
            "failed": failed,
            "probed": probed,
            "unprobed": unprobed,
            "pool_size": size,
            "blind_threshold": ps.blind_threshold,
        },
    )


# A pair may disagree on thousands of servers: the words name a few, the evidence more.
_NAMES_SHOWN = 20
_NAMES_KEPT = 200


def inconsistent_warning(ps: PoolSettings, partial: Collection[ServerId]) -> Reason:
    names = sorted(sid.server for sid in partial)
    shown = ", ".join(names[:_NAMES_SHOWN]) + (" ..." if len(names) > _NAMES_SHOWN else "")
    return Reason(
        Rule.INCONSISTENT,
        f"pool {ps.name}: the load balancer's endpoints do not list the same servers "
        f"({len(names)} listed by only some: {shown}); nothing is drained or restored there "
        "until they agree",
        {"pool": ps.name, "count": len(names), "servers": names[:_NAMES_KEPT]},
    )


def inconsistent(
    what: str, ps: PoolSettings, partial: Collection[ServerId], evidence: Mapping[str, object]
) -> Reason:
    return Reason(
        Rule.INCONSISTENT,
        f"pool {ps.name}: the load balancer's endpoints do not list the same servers: not {what}",
        {**evidence, "not_on_every_endpoint": len(partial)},
    )


def starved(what: str, evidence: Mapping[str, object]) -> Reason:
    return Reason(
        Rule.STARVED,
        f"the daemon is starved (its event loop lags): not {what} on this round's samples",
        dict(evidence),
    )


def drain_evidence(st: ServerState, sample: Sample | None, ps: PoolSettings) -> dict[str, object]:
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


def fall_message(st: ServerState, ps: PoolSettings, evidence: Mapping[str, object]) -> str:
    if st.verdict is Verdict.FAILED:
        # The streak counts failed and overloaded samples alike: only the last is known to
        # have failed, and a failed probe is not called an overload.
        outcome = evidence.get("outcome", "failed")
        detail = evidence.get("detail")
        return (
            f"{st.bad} bad samples in a row (fall {ps.fall}), the last a failed probe "
            f"({outcome}{': ' + str(detail) if detail else ''})"
        )
    detail = over_marks(evidence.get("signals"), ps.marks)
    return f"{st.bad} overloaded samples in a row (fall {ps.fall}){': ' + detail if detail else ''}"


def over_marks(signals: object, marks: Mapping[str, Marks]) -> str:
    """The signals at or over their high mark, as `cpu 0.95 >= 0.9`."""
    if not isinstance(signals, dict):
        return ""
    parts = [
        f"{name} {signals[name]:g} >= {mark.high:g}"
        for name, mark in sorted(marks.items())
        if name in signals and signals[name] >= mark.high
    ]
    return ", ".join(parts)


def cap_message(rule: Rule, ps: PoolSettings) -> str:
    if rule is Rule.MAX_DRAINED:
        return (
            f"overloaded, but draining it would exceed max_drained {ps.max_drained:.0%} of the pool"
        )
    return f"overloaded, but draining it would leave fewer than min_in_service {ps.min_in_service}"


def hand_state(state: AdminState, phase: str) -> Reason:
    return Reason(
        Rule.HAND_CHANGE,
        f"state set to {state.value} by hand",
        {"state": state.value, "phase": phase},
    )


def hand_weight(weight: int, share: float) -> Reason:
    return Reason(
        Rule.HAND_CHANGE,
        f"weight set to {weight} by hand: slow start stops there",
        {"weight": weight, "share": round(share, 3)},
    )


def step_down(judged: Judgement, before: float, after: float) -> Reason:
    return Reason(
        Rule.STEP_DOWN,
        f"{judged.verdict.value} while its weight ramps up: weight share "
        f"{before:.0%} -> {after:.0%} instead of a drain",
        {
            "verdict": judged.verdict.value,
            "from": round(before, 3),
            "to": round(after, 3),
            "over": list(judged.over),
        },
    )


def weight_enforced(ps: PoolSettings, live: int, expected: int) -> Reason:
    return Reason(
        Rule.ENFORCE_WEIGHTS,
        f"weight {live}, expected {expected}: set back (enforce_weights)",
        {"pool": ps.name, "from": live, "to": expected},
    )
