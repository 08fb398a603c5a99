"""The daemon's monitors from the postmortem: traffic balance every round, config audit after
every change lbhealthd makes and on a timer. Alerts are log events and fields of `status`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import structlog

from lbhealthd.config import Config, PoolConfig
from lbhealthd.model import Member, ServerId
from lbhealthd.monitors.audit import Finding
from lbhealthd.monitors.balance import (
    BalanceMonitor,
    BalanceReport,
    ServerTraffic,
    misweighted_text,
)
from lbhealthd.pool_audit import intended_weight, live_findings, misweighted

log = structlog.get_logger("lbhealthd.daemon.monitoring")


@dataclass
class PoolWatch:
    """Per-pool monitor state kept by the daemon between rounds."""

    balance: BalanceMonitor
    report: BalanceReport | None = None
    findings: list[Finding] = field(default_factory=list)
    #: What the balance read of the pool's members last time, and from what: an unchanged
    #: read (the same member map, pool config and ramping servers) is not read again.
    seen: tuple[object, ...] = ()
    traffic: dict[str, ServerTraffic] = field(default_factory=dict)
    wrong: dict[str, tuple[int, int]] = field(default_factory=dict)


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

    def run(
        self,
        pools: Collection[PoolConfig],
        members: Mapping[str, Mapping[ServerId, Member]],
        owned: Collection[ServerId],
        recorded: Mapping[str, Collection[str]],
        now: float,
        audit_interval: float,
        ramping: Collection[ServerId] = (),
    ) -> None:
        """Balance of every pool read this round; the audit after a change lbhealthd made
        (``audit_due``) or every ``audit_interval``. ``ramping``: the servers lbhealthd ramps
        up (their weights are on their way: not misweighted)."""
        due = self.audit_due or self.last_audit is None or now - self.last_audit >= audit_interval
        for pool in pools:
            self.balance(pool, members[pool.name], now, ramping)
            if due:
                mine = [sid for sid in owned if sid.pool == pool.name]
                self.audit(pool, members[pool.name], mine, recorded.get(pool.name))
        if due and pools:
            self.audit_due = False
            self.last_audit = now

    def balance(
        self,
        pool: PoolConfig,
        members: Mapping[ServerId, Member],
        now: float,
        ramping: Collection[ServerId] = (),
    ) -> None:
        watch = self.pools[pool.name]
        mine = sorted(sid for sid in ramping if sid.pool == pool.name)
        if watch.seen and watch.seen[0] is members and watch.seen[1:] == (pool, mine):
            traffic, wrong = watch.traffic, watch.wrong
        else:
            traffic = {
                sid.server: ServerTraffic(m.sessions_total, m.in_rotation, intended_weight(pool, m))
                for sid, m in members.items()
            }
            wrong = misweighted(pool, members, ramping)
            watch.seen, watch.traffic, watch.wrong = (members, pool, mine), traffic, wrong
        before = watch.report.misweighted if watch.report is not None else {}
        report = watch.balance.update(now, traffic, wrong)
        watch.report = report
        if wrong and wrong != before:
            log.warning("pool_misweighted", pool=pool.name, servers=misweighted_text(wrong))
        elif before and not wrong:
            log.info("pool_weights_right", pool=pool.name)
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
