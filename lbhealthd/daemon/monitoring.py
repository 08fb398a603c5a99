"""The daemon's monitors from the postmortem: traffic balance every round, config audit after
every change lbhealthd makes and on a timer. Alerts are log events and fields of `status`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import structlog

from lbhealthd.config import Config, PoolConfig
from lbhealthd.model import AdminState, Member, OpState, ServerId
from lbhealthd.monitors.audit import (
    Expectation,
    Finding,
    audit_pool,
    expectation_from,
)
from lbhealthd.monitors.balance import BalanceMonitor, BalanceReport, ServerTraffic

log = structlog.get_logger("lbhealthd.daemon.monitoring")


def intended_weight(pool: PoolConfig, member: Member) -> float:
    """The weight the operator intends: the audit's expected weight when one is configured
    (a misweighted pool is then seen as skewed), else the LB's current weight."""
    expected = pool.expected_weights.get(member.id.server, pool.expected_weights.get("default"))
    return float(expected) if expected is not None else float(member.weight)


def serving(member: Member) -> bool:
    return member.admin is AdminState.READY and member.op not in (OpState.DOWN, OpState.STOPPING)


def expectation(pool: PoolConfig, recorded: Collection[str] | None) -> Expectation:
    """Expected servers: the config's list, else the set recorded at the first run."""
    servers = pool.servers if pool.servers is not None else recorded
    return expectation_from(pool.name, servers, pool.expected_weights)


def live_findings(
    pool: PoolConfig,
    members: Mapping[ServerId, Member],
    owned: Collection[ServerId],
    recorded: Collection[str] | None,
) -> list[Finding]:
    checks = {sid: m.checks_enabled for sid, m in members.items() if m.checks_enabled is not None}
    return audit_pool(list(members.values()), expectation(pool, recorded), owned, checks=checks)


@dataclass
class PoolWatch:
    """Per-pool monitor state kept by the daemon between rounds."""

    balance: BalanceMonitor
    report: BalanceReport | None = None
    findings: list[Finding] = field(default_factory=list)


class Watch:
    """Runs the monitors for every pool and logs their alerts when they change."""

    def __init__(self, config: Config) -> None:
        self.pools: dict[str, PoolWatch] = {}
        self.configure(config)
        self.audit_due = True
        self.last_audit: float | None = None

    def configure(self, config: Config) -> None:
        self.config = config
        for pool in config.pools:
            b = pool.balance_alert
            old = self.pools.get(pool.name)
            current = (
                None
                if old is None
                else (
                    old.balance.factor,
                    old.balance.hold,
                    old.balance.min_sessions,
                    old.balance.window,
                )
            )
            if current != (b.factor, b.for_, b.min_sessions, b.window):
                self.pools[pool.name] = PoolWatch(
                    BalanceMonitor(
                        factor=b.factor, hold=b.for_, min_sessions=b.min_sessions, window=b.window
                    )
                )
        for name in set(self.pools) - {p.name for p in config.pools}:
            del self.pools[name]

    def balance(self, pool: PoolConfig, members: Mapping[ServerId, Member], now: float) -> None:
        watch = self.pools[pool.name]
        traffic = {
            sid.server: ServerTraffic(m.sessions_total, serving(m), intended_weight(pool, m))
            for sid, m in members.items()
        }
        report = watch.balance.update(now, traffic)
        watch.report = report
        if report.changed and report.firing:
            log.warning(
                "balance_alert_fired",
                pool=pool.name,
                culprits=[f"{pool.name}/{c}" for c in report.culprits],
                imbalance=report.imbalance,
                reason=report.reason,
                sessions=report.window_sessions,
            )
        elif report.changed:
            log.info(
                "balance_alert_cleared",
                pool=pool.name,
                imbalance=report.imbalance,
                reason=report.reason,
            )

    def audit(
        self,
        pool: PoolConfig,
        members: Mapping[ServerId, Member],
        owned: Collection[ServerId],
        recorded: Collection[str] | None,
    ) -> None:
        watch = self.pools[pool.name]
        findings = live_findings(pool, members, owned, recorded)
        if findings != watch.findings:
            if findings:
                log.warning(
                    "audit_drift",
                    pool=pool.name,
                    findings=[f.message for f in findings],
                    kinds=sorted({f.kind.value for f in findings}),
                )
            else:
                log.info("audit_clean", pool=pool.name)
        watch.findings = findings

    def alerts(self, pool: str) -> list[dict[str, object]]:
        """The pool's open alerts for `status`."""
        watch = self.pools.get(pool)
        if watch is None:
            return []
        out: list[dict[str, object]] = []
        if watch.report is not None and watch.report.firing:
            out.append(
                {
                    "rule": "balance",
                    "message": watch.report.reason,
                    "culprits": list(watch.report.culprits),
                    "imbalance": watch.report.imbalance,
                }
            )
        out += [
            {"rule": "audit", "message": f.message, "kind": f.kind.value} for f in watch.findings
        ]
        return out
