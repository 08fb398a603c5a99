"""One log event per decision, with its rule and evidence; repeated states logged once.

An action is logged every time it is decided (``server_drained``, ``server_restored``,
``server_maint``, ``server_stepped_down``). A blocked change, a blind or inconsistent pool, an
override beyond the caps and a starved daemon last for many rounds: each is logged when it
starts (a pool beyond its caps again when the servers out change) and, except a blocked change,
when it ends; not again every round it lasts. A weight correction (``weight_enforced``) decided
again round after round for the same weights (in a dry run, or while the LB refuses the
command) is logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from lbhealthd.model import ActionKind, Blocked, Decision, Rule, ServerId
from lbhealthd.report import LastAction

log = structlog.get_logger("lbhealthd.daemon.reconciler")

EVENTS = {
    "drain": "server_drained",
    "restore": "server_restored",
    "maint": "server_maint",
    "step_down": "server_stepped_down",
    "set_weight": "weight_enforced",
}


class DecisionLog:
    """Logs each round's decision; remembers what is under way to log changes only."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.last_action: Mapping[ServerId, LastAction] = {}
        self.blocked: Mapping[ServerId, Blocked] = {}
        self._blocked: set[tuple[ServerId, str, str]] = set()
        self._blind: set[str] = set()
        self._split: set[str] = set()
        self._over_cap: dict[str, str] = {}  # pool -> the warning logged for it
        self._corrections: set[tuple[ServerId, object, object]] = set()
        self.starved = False

    def starvation(self, starved: float, frozen: bool, limit: float) -> None:
        """Log when the daemon starts or stops being starved (``starved`` in seconds)."""
        if frozen == self.starved:
            return
        if frozen:
            log.error(
                "daemon_starved",
                lag_ms=round(starved * 1000, 1),
                max_loop_lag_ms=round(limit * 1000, 1),
                note="this round's probes are not trusted: nothing drained or restored",
            )
        else:
            log.info("daemon_recovered", lag_ms=round(starved * 1000, 1))
        self.starved = frozen

    def decision(self, decision: Decision, dry_run: bool) -> None:
        wall = self.wall()
        if decision.actions:
            last = dict(self.last_action)
            for action in decision.actions:
                last[action.server] = LastAction(action, wall)
            self.last_action = last
        self.blocked = {b.server: b for b in decision.blocked}
        corrections: set[tuple[ServerId, object, object]] = set()
        for action in decision.actions:
            if action.kind is ActionKind.SET_WEIGHT:
                ev = action.reason.evidence
                key = (action.server, ev.get("from"), ev.get("to"))
                corrections.add(key)
                if key in self._corrections:
                    continue  # the same correction as the last round's: logged then
            log.info(
                EVENTS[action.kind.value],
                server=str(action.server),
                rule=action.reason.rule.value,
                reason=action.reason.message,
                evidence=dict(action.reason.evidence),
                dry_run=dry_run,
            )
        self._corrections = corrections
        blocked = set()
        for b in decision.blocked:
            key = (b.server, b.kind.value, b.reason.rule.value)
            blocked.add(key)
            if key not in self._blocked:
                log.warning(
                    f"{b.kind.value}_blocked",
                    server=str(b.server),
                    rule=b.reason.rule.value,
                    reason=b.reason.message,
                    evidence=dict(b.reason.evidence),
                )
        self._blocked = blocked
        self._blind = _pool_changes(
            decision,
            decision.blind_pools,
            self._blind,
            Rule.BLIND,
            ("pool_blind", "pool_sight_restored"),
        )
        self._split = _pool_changes(
            decision,
            decision.inconsistent_pools,
            self._split,
            Rule.INCONSISTENT,
            ("pool_inconsistent", "pool_consistent"),
        )
        over_cap: dict[str, str] = {}
        for w in decision.warnings:
            if w.rule is Rule.OVERRIDE_OVER_CAP:
                pool = str(w.evidence.get("pool", ""))
                over_cap[pool] = w.message
                if self._over_cap.get(pool) != w.message:
                    log.warning(
                        "override_over_cap", pool=pool, reason=w.message, evidence=dict(w.evidence)
                    )
        for pool in sorted(self._over_cap.keys() - over_cap.keys()):
            log.info("override_within_cap", pool=pool)
        self._over_cap = over_cap

    def forget(self, gone: set[ServerId]) -> None:
        """Servers that left their pool."""
        if gone & self.last_action.keys():
            self.last_action = {k: v for k, v in self.last_action.items() if k not in gone}


def _pool_changes(
    decision: Decision,
    now: frozenset[str],
    before: set[str],
    rule: Rule,
    events: tuple[str, str],
) -> set[str]:
    """Log the pools that entered a state (with the warning of ``rule`` that says why) and
    those that left it; return the pools in it now."""
    started, ended = events
    for pool in sorted(now - before):
        reason = next(
            (w for w in decision.warnings if w.rule is rule and w.evidence.get("pool") == pool),
            None,
        )
        log.error(
            started,
            pool=pool,
            reason=reason.message if reason else "",
            evidence=dict(reason.evidence) if reason else {},
        )
    for pool in sorted(before - now):
        log.info(ended, pool=pool)
    return set(now)
