"""Prometheus metrics of a running daemon, in a registry of its own (never the global one).

Almost everything is read after each round from the round's report (``observe_round``);
the few events a report cannot show are pushed as they happen: ``observe_reload`` (a reload
applied or refused),
``enforced`` (an LB command carrying out a decision succeeded), ``lb_command``, ``retry``,
``state_write_failed`` (from the journal's worker thread: prometheus_client's counters take a
lock) and ``starvation`` (the event-loop lag measured before each round).

Decisions are counted three ways, as Envoy counts ejections: *decided* by the engine,
*enforced* in the LB (not in dry-run, not when the command failed), and *blocked* by a safety
rule (counted once when a block starts, not again each round it lasts).

Label sets stay bounded: a server's series are removed when it leaves its pool, a pool's
when it leaves the config; the state, rule and outcome labels take values from fixed enums.

The per-server gauges (state, weight, desired, signals) are built when ``/metrics`` is read,
from the last report (``server_series``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from lbhealthd.daemon.info_metrics import InfoMetrics
from lbhealthd.daemon.listener_metrics import ListenerMetrics
from lbhealthd.daemon.server_series import ServerSeries
from lbhealthd.model import ActionKind, AdminState, Rule, Sample, ServerId
from lbhealthd.report import PoolReport, Reload, RoundReport

M = TypeVar("M", bound=MetricWrapperBase)


class _Tracked(Generic[M]):
    """A labelled metric that remembers its label sets, so stale ones can be removed."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self.live: set[tuple[str, ...]] = set()
        self.seen: set[tuple[str, ...]] = set()  # set since the last sweep

    def __call__(self, *labels: str) -> M:
        self.live.add(labels)
        self.seen.add(labels)
        return self.metric.labels(*labels)

    def sweep(self) -> None:
        """Remove the label sets not set since the last sweep."""
        self._remove(self.live - self.seen)
        self.seen = set()

    def drop_pools(self, pools: Collection[str]) -> None:
        """Remove the label sets of these pools (the pool is the first label)."""
        self._remove({labels for labels in self.live if labels[0] in pools})

    def _remove(self, gone: set[tuple[str, ...]]) -> None:
        for labels in gone:
            self.metric.remove(*labels)
        self.live -= gone


class Metrics:
    """The daemon's metrics. ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._wall = wall
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> _Tracked[Gauge]:
            return _Tracked(Gauge(name, doc, labels, registry=r))

        # Per server: the LB's view, the engine's wish and the latest probe (built on scrape).
        self.servers = ServerSeries()
        r.register(self.servers)
        self.probe_latency = _Tracked(
            Histogram(
                "lbhealthd_probe_latency_seconds",
                "Latency of probes that got an answer (each probe counted once).",
                ("pool",),
                registry=r,
            )
        )
        self.probes = _Tracked(
            Counter(
                "lbhealthd_probes_total",
                "Probes whose result arrived, failed or not (each probe counted once).",
                ("pool",),
                registry=r,
            )
        )
        self.probe_failures = _Tracked(
            Counter(
                "lbhealthd_probe_failures_total",
                "Failed probes by outcome (timeout, refused, http_status, bad_body, error).",
                ("pool", "outcome"),
                registry=r,
            )
        )
        # Decisions and the LB commands carrying them out.
        self.decisions = _Tracked(
            Counter(
                "lbhealthd_decisions_total",
                "Actions decided by the engine, enforced in the LB, or blocked by a rule.",
                ("pool", "action", "rule", "result"),
                registry=r,
            )
        )
        self.weight_corrections = _Tracked(
            Counter(
                "lbhealthd_weight_corrections_total",
                "Weights set back to the pool's expected_weights (enforce_weights).",
                ("pool",),
                registry=r,
            )
        )
        self.lb_commands = Counter(
            "lbhealthd_lb_commands_total",
            "Commands sent to the LB (set state or weight), by result.",
            ("result",),
            registry=r,
        )
        for result in ("ok", "error"):
            self.lb_commands.labels(result)
        self.lb_retries = Counter(
            "lbhealthd_lb_retries_total",
            "LB requests retried after a transient error.",
            registry=r,
        )
        # Per pool.
        self.pool_blind = gauge(
            "lbhealthd_pool_blind",
            "1 while too many probes fail at once: lbhealthd fails open and drains nothing.",
            ("pool",),
        )
        self.pool_inconsistent = gauge(
            "lbhealthd_pool_inconsistent_servers",
            "Servers that not every endpoint of the LB's HA pair lists; above 0, the pool's "
            "membership is unknown and lbhealthd drains and restores nothing there.",
            ("pool",),
        )
        self.pool_available = gauge(
            "lbhealthd_pool_lb_available",
            "1 when the pool was read from the LB in the last round, 0 when the read failed.",
            ("pool",),
        )
        self.pool_drained = gauge(
            "lbhealthd_pool_drained",
            "Servers of the pool in the LB's drain state.",
            ("pool",),
        )
        self.pool_balance = gauge(
            "lbhealthd_pool_balance_ratio",
            "Traffic imbalance: the largest actual/intended share ratio (NaN: no verdict).",
            ("pool",),
        )
        self.pool_balance_alert = gauge(
            "lbhealthd_pool_balance_alert",
            "1 while the balance alert is firing.",
            ("pool",),
        )
        self.pool_misweighted = gauge(
            "lbhealthd_pool_misweighted_servers",
            "Servers whose live weight differs from the pool's expected_weights (servers "
            "lbhealthd ramps up not counted); above 0, the balance alert does not clear.",
            ("pool",),
        )
        self.pool_audit = gauge(
            "lbhealthd_pool_audit_findings",
            "Differences the last audit found between the LB and what is expected.",
            ("pool",),
        )
        # The pool against its caps, counted as the caps count (see ``PoolReport.budget``).
        self.pool_in_service = gauge(
            "lbhealthd_pool_in_service_servers", "Servers of the pool in rotation.", ("pool",)
        )
        self.pool_out = gauge(
            "lbhealthd_pool_out_of_service_servers",
            "Servers of the pool out of rotation, whatever took them out.",
            ("pool",),
        )
        self.pool_min_in_service = gauge(
            "lbhealthd_pool_min_in_service",
            "The pool's min_in_service: the floor of servers in rotation.",
            ("pool",),
        )
        self.pool_at_cap = gauge(
            "lbhealthd_pool_at_cap",
            "1 when no further server may go out (max_drained or min_in_service forbids it).",
            ("pool",),
        )
        # The daemon itself.
        self.state_write_failures = Counter(
            "lbhealthd_state_write_failures_total",
            "Writes to state_dir that failed, by file (owned, actions, or a blob's name).",
            ("file",),
            registry=r,
        )
        # Every file the daemon writes, at 0, so that an alert on increase() sees the first.
        for file in ("owned", "actions", "engine", "epochs", "discovered", "pending"):
            self.state_write_failures.labels(file)
        self.starved = Gauge(
            "lbhealthd_daemon_starved",
            "1 while the event loop lags beyond daemon.max_loop_lag: probes are not trusted, "
            "nothing is drained or restored.",
            registry=r,
        )
        self.loop_lag = Gauge(
            "lbhealthd_loop_lag_seconds",
            "The worst event-loop lag seen between the last two rounds.",
            registry=r,
        )
        # Rounds.
        self.rounds = Counter("lbhealthd_rounds", "Rounds completed.", registry=r)
        self.round_duration = Histogram(
            "lbhealthd_round_duration_seconds", "How long a round took.", registry=r
        )
        self.last_round = Gauge(
            "lbhealthd_last_round_timestamp_seconds",
            "Unix time when the last round completed.",
            registry=r,
        )
        # The config, named as Prometheus names its own: a refused reload is kept at 0 until a
        # reload succeeds, so an alert sees it however long ago it happened.
        self.reload_ok = Gauge(
            "lbhealthd_config_last_reload_successful",
            "1 if the last reload of the config file succeeded (or none was asked), 0 if it was "
            "refused: the daemon runs an older config than the file.",
            registry=r,
        )
        self.reload_ok.set(1)
        self.reload_success_at = Gauge(
            "lbhealthd_config_last_reload_success_timestamp_seconds",
            "Unix time when the config in use was loaded (at start or by the last good reload).",
            registry=r,
        )
        self.reload_success_at.set(self._wall())
        # Build, dry run, overrides in force.
        self.info = InfoMetrics(r)
        self.listeners = ListenerMetrics(r)
        self._rounds_seen = 0
        self._sample_at: dict[ServerId, float] = {}
        self._blocked: set[tuple[ServerId, str, str]] = set()
        self._pools: set[str] = set()

    # --- events pushed while a round runs -----------------------------------------------------

    def enforced(self, server: ServerId, action: ActionKind | str, rule: Rule | str) -> None:
        """An LB command carrying out a decided action succeeded."""
        self.decisions(server.pool, str(action), str(rule), "enforced").inc()

    def weight_corrected(
        self, server: ServerId, action: ActionKind | str, rule: Rule | str
    ) -> None:
        """A weight was set back to its expected one (enforce_weights)."""
        self.enforced(server, action, rule)
        self.weight_corrections(server.pool).inc()

    def lb_command(self, ok: bool) -> None:
        """A command was sent to the LB; ``ok`` is False when it failed."""
        self.lb_commands.labels("ok" if ok else "error").inc()

    def retry(self) -> None:
        """An LB request is retried after a transient error."""
        self.lb_retries.inc()

    def state_write_failed(self, file: str) -> None:
        """A write to state_dir failed; ``file`` is ``owned``, ``actions`` or a blob's name."""
        self.state_write_failures.labels(file).inc()

    def starvation(self, lag: float, starved: bool) -> None:
        """Before a round: the worst event-loop lag since the last one, and whether it is
        beyond ``daemon.max_loop_lag``."""
        self.loop_lag.set(lag)
        self.starved.set(1 if starved else 0)

    def observe_reload(self, outcome: Reload) -> None:
        """A reload of the config file was applied, or refused."""
        self.reload_ok.set(1 if outcome.ok else 0)
        if outcome.ok:
            self.reload_success_at.set(outcome.at)

    # --- after each round ---------------------------------------------------------------------

    def observe_round(self, r: RoundReport, duration: float) -> None:
        """Update every metric from a round's report."""
        pools = {p.name for p in r.pools}
        gone = self._pools - pools
        self._pools = pools
        for tracked in (
            self.probe_latency,
            self.probes,
            self.probe_failures,
            self.decisions,
            self.weight_corrections,
        ):
            tracked.drop_pools(gone)
        self._decisions(r)
        self.servers.update(r)
        present: set[ServerId] = set()
        for pool in sorted(r.pools, key=lambda p: p.name):
            present |= pool.members.keys()
            self._probes(pool, r.samples)
            self._pool(pool)
        for sid in self._sample_at.keys() - present:
            del self._sample_at[sid]
        for series in (
            self.pool_blind,
            self.pool_inconsistent,
            self.pool_available,
            self.pool_drained,
            self.pool_balance,
            self.pool_balance_alert,
            self.pool_misweighted,
            self.pool_audit,
            self.pool_in_service,
            self.pool_out,
            self.pool_min_in_service,
            self.pool_at_cap,
        ):
            series.sweep()
        self.rounds.inc(max(0, r.rounds - self._rounds_seen))
        self._rounds_seen = max(self._rounds_seen, r.rounds)
        self.round_duration.observe(duration)
        self.last_round.set(self._wall())
        self.info.observe(r)

    def _decisions(self, r: RoundReport) -> None:
        decision = r.decision
        if decision is None:
            return
        for a in decision.actions:
            self.decisions(a.server.pool, a.kind.value, a.reason.rule.value, "decided").inc()
        blocked = {(b.server, b.kind.value, b.reason.rule.value) for b in decision.blocked}
        for sid, kind, rule in sorted(blocked - self._blocked):
            self.decisions(sid.pool, kind, rule, "blocked").inc()
        self._blocked = blocked

    def _probes(self, pool: PoolReport, samples: Mapping[ServerId, Sample]) -> None:
        """Count each server's latest probe in the latency histogram or failures, once."""
        seen = self._sample_at
        latency_of = None  # the pool's histogram, looked up once when needed
        counted = 0
        for sid in pool.members:
            sample = samples.get(sid)
            if sample is None or seen.get(sid) == sample.at:
                continue
            seen[sid] = sample.at
            counted += 1
            latency = sample.signals.get("latency_ms")
            if latency is not None:
                if latency_of is None:
                    latency_of = self.probe_latency(pool.name)
                latency_of.observe(latency / 1000.0)
            if not sample.ok:
                self.probe_failures(pool.name, sample.outcome.value).inc()
        if counted:
            self.probes(pool.name).inc(counted)

    def _pool(self, pool: PoolReport) -> None:
        name = pool.name
        self.pool_blind(name).set(1 if pool.blind else 0)
        self.pool_inconsistent(name).set(len(pool.partial))
        self.pool_available(name).set(0 if pool.lb_error is not None else 1)
        drained = sum(1 for m in pool.members.values() if m.admin is AdminState.DRAIN)
        self.pool_drained(name).set(drained)
        report = pool.balance
        imbalance = report.imbalance if report is not None else None
        self.pool_balance(name).set(math.nan if imbalance is None else imbalance)
        self.pool_balance_alert(name).set(1 if report is not None and report.firing else 0)
        self.pool_misweighted(name).set(0 if report is None else len(report.misweighted))
        self.pool_audit(name).set(len(pool.findings))
        if pool.members:  # a pool never read has no size yet
            budget = pool.budget()
            self.pool_in_service(name).set(budget.size - budget.out)
            self.pool_out(name).set(budget.out)
            self.pool_min_in_service(name).set(pool.settings.min_in_service)
            self.pool_at_cap(name).set(0 if budget.check(pool.settings) is None else 1)


__all__ = ["Metrics"]
