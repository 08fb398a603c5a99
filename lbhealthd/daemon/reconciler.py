"""One round of the daemon: read the LB, probe, decide, converge, record, report.

Level-triggered: every round compares what the engine wants with what the LB reports and sends
only the difference (through the one LB writer, lbhealthd.writer), so a lost command, a
restarted HAProxy and a restarted daemon all heal the same way.

What a round does, in order:
1. Prune expired overrides and read the current ones from ``state_dir``.
2. Read every pool (daemon/pool_reader.py). For each server, settle a change left pending by a
   crash, and notice a *hand change*: an operator changed, by other means, a state or weight
   lbhealthd had set. lbhealthd then lets go of it (ownership released, an out-override
   dropped) and tells the engine, whose rules decide the rest (a server put back in rotation by
   hand gets a keep-in override for ``daemon.manual_change_hold``).
3. Run the monitors (balance every round, the audit after a change or on its timer).
4. Decide (the pure engine) with each server's observation (daemon/observations.py): its newest
   sample merged with the LB's counters, or those counters as a sample of their own.
5. Converge every server that may need a change, through the writer, up to the driver's
   ``max_in_flight`` at once; persist the engine's memory; publish the round's report.

Nothing here decides policy and nothing here edits the engine's state: both are the engine's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import structlog

from lbhealthd import engine
from lbhealthd.config import Config, PoolConfig
from lbhealthd.daemon.decision_log import DecisionLog
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.daemon.monitoring import Watch
from lbhealthd.daemon.observations import Observations
from lbhealthd.daemon.override_book import OverrideBook
from lbhealthd.daemon.pool_reader import PoolReader
from lbhealthd.daemon.probe_targets import ProbeTargets
from lbhealthd.drivers import Driver
from lbhealthd.engine import EngineState, Settings
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    ByHand,
    Decision,
    Desired,
    Member,
    Override,
    Sample,
    ServerId,
)
from lbhealthd.probes.lbstats import merge
from lbhealthd.probes.scheduler import Target
from lbhealthd.report import ConfigStatus, PoolReport, RoundReport
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter
from lbhealthd.writer.journal import Journal

log = structlog.get_logger("lbhealthd.daemon.reconciler")


class Probes(Protocol):
    """What the reconciler needs of the probe scheduler."""

    def sync(self, targets: Mapping[ServerId, Target]) -> None: ...
    def latest(self, sid: ServerId) -> Sample | None: ...
    async def close(self) -> None: ...


class Reconciler:
    """Runs rounds; holds what must last between them; publishes each round's report."""

    def __init__(
        self,
        config: Config,
        driver: Driver,
        store: Store,
        scheduler: Probes,
        *,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.scheduler = scheduler
        self.mono = mono
        self.wall = wall
        self.config = config
        self.settings: Settings = config.engine_settings()
        self._fast_pools = _fast_pools(config)
        self.journal = Journal(store, clock=store.clock, on_failure=self.metrics.state_write_failed)
        self.writer = LbWriter(
            driver,
            self.journal,
            dry_run=config.daemon.dry_run,
            mono=mono,
            on_command=self._on_command,
        )
        self.reader = PoolReader(driver, self.journal, wall, self._owned_in)
        self.book = OverrideBook(store, self.writer)
        self.watch = Watch(config)
        self.decisions = DecisionLog(wall)
        self.state, ignored, clamped = engine.from_persisted(
            (store.load_blob("engine") or {}).get("servers", {}),
            {s: e.since for s, e in self.writer.owned.items() if e.admin is not AdminState.READY},
            self.overrides,
            mono(),
            wall(),
            self.settings,
        )
        for entry in ignored:
            log.warning("engine_state_entry_ignored", entry=entry)
        for c in clamped:
            log.warning(
                "engine_state_entry_clamped",
                server=c.server,
                field=c.field,
                stored=c.stored,
                used=c.used,
            )
        self._persisted: dict[str, dict[str, object]] | None = None
        self._desired: dict[str, Mapping[ServerId, Desired]] = {}
        self.targets = ProbeTargets(scheduler)
        self.observations = Observations()
        #: Called when a sample asks for a round now (see ``sample_arrived``).
        self.on_evidence: Callable[[], None] | None = None
        #: The config's file, load time and last reload, as the daemon sets them.
        self.config_status = ConfigStatus(None, wall())
        #: Operators' changes to the memory, made as the next round starts (memory_requests).
        self.requests: list[Callable[[], None]] = []
        self.report = self._report(None, rounds=0, finished_at=None)

    @property
    def overrides(self) -> Mapping[ServerId, Override]:
        """The operators' overrides as read last (what this round decides with)."""
        return self.book.current

    @property
    def rounds(self) -> int:
        return self.report.rounds

    @property
    def dry_run(self) -> bool:
        return self.config.daemon.dry_run

    def reload(self, config: Config) -> None:
        """Use a new, already validated config from the next round on."""
        self.config = config
        self.settings = config.engine_settings()
        self._fast_pools = _fast_pools(config)
        self.writer.dry_run = config.daemon.dry_run
        self.watch.configure(config)

    def set_config_status(self, config_status: ConfigStatus) -> None:
        """Publish a reload's outcome at once, not only with the next round's report."""
        self.config_status = config_status
        self.report = dataclasses.replace(self.report, config=config_status)

    async def close(self) -> None:
        """Write what is still staged (the daemon calls it when it stops)."""
        await self.writer.flush()

    # --- the round ----------------------------------------------------------------------------

    async def tick(self, starved: float = 0.0) -> Decision:
        """Run one round; never raises for LB or probe trouble (that is logged and retried).

        ``starved`` is the worst event-loop lag (seconds) seen since the last round. Above
        ``daemon.max_loop_lag`` the round's samples are no evidence (a starved daemon measures
        its own lateness as latency and timeouts): the engine judges none of them.
        """
        now, wall = self.mono(), self.wall()
        limit = self.config.daemon.max_loop_lag
        frozen = starved > limit
        self.decisions.starvation(starved, frozen, limit)
        self.metrics.starvation(starved, frozen)
        requests, self.requests = self.requests, []
        for request in requests:
            request()
        self.book.refresh(wall)
        read: list[PoolConfig] = []
        hands: dict[ServerId, ByHand] = {}
        forget: list[ServerId] = []
        held = self.writer.held()
        for pool in self.config.pools:
            got = await self.reader.read(pool)
            if got is None:
                continue
            read.append(pool)
            members, restarted = got
            for sid in sorted(s for s in held if s.pool == pool.name and s in members):
                member = members[sid]
                if self.writer.recovering(sid):
                    if self.writer.settle(sid, member):
                        forget.append(sid)
                elif not self.writer.has_pending(sid) and not restarted:
                    hand = self._hand_change(sid, member)
                    if hand is not None:
                        hands[sid] = hand
        if forget:
            self.state = engine.forget(self.state, forget)
        self.watch.run(
            read,
            self.reader.members,
            list(self.writer.owned),
            self.reader.discovered,
            now,
            self.config.daemon.audit_interval,
            [sid for sid, e in self.writer.owned.items() if e.weight is not None],
        )
        self.targets.sync(self.config.pools, self.reader.members)
        observations = self.observations.build(
            read,
            self.reader.members,
            hands,
            self.scheduler.latest,
            self.writer.holds_out,
            self.overrides,
            now,
            self.reader.counters,
        )
        settings = Settings({p.name: self.settings.pools[p.name] for p in read})
        partial = self.reader.partial
        split = {p.name: partial[p.name] for p in read if partial.get(p.name)}
        state, decision = engine.decide(
            self.state,
            observations,
            self.overrides,
            settings,
            now,
            frozen=frozen,
            inconsistent=split,
        )
        names = {p.name for p in read}
        kept = {sid: st for sid, st in self.state.servers.items() if sid.pool not in names}
        absent = {sid: t for sid, t in self.state.absent.items() if sid.pool not in names}
        self.state = EngineState({**kept, **state.servers}, {**absent, **state.absent})
        for name in names:
            self._desired[name] = {s: d for s, d in decision.desired.items() if s.pool == name}
        self.decisions.decision(decision, self.dry_run)
        self.book.keep_in(decision.released, self.config.daemon.manual_change_hold, self.wall())
        await self._converge_all(decision, split)
        self._persist_engine_state(now, wall)
        await self.writer.flush()
        self.report = self._report(decision, self.report.rounds + 1, now)
        return decision

    def _hand_change(self, sid: ServerId, member: Member) -> ByHand | None:
        """What an operator changed by hand of what lbhealthd set; an out-override of a
        server whose state was changed by hand ends with it."""
        hand = self.writer.notice_hand_change(sid, member)
        if hand is not None and hand.admin is not None:
            self.book.end_out_override(sid)
        return hand

    def sample_arrived(self, sid: ServerId, sample: Sample) -> bool:
        """Told by the probe scheduler of every sample as it arrives. True when the sample
        starts or extends a streak toward a drain or a restore: the scheduler then confirms it
        soon, and ``on_evidence`` asks for a round now rather than at the next interval, so
        each such sample is judged, and the one that completes the streak acted on, at once.
        A sample that ends a streak under way asks for a round too (it is not confirmed
        fast): a newer sample must not hide it. With fast confirmation off for the pool
        (``fast_interval`` equal to ``interval``) samples wait for the next round, as the
        servers' streaks then complete together and are drained worst first."""
        ps = self.settings.pools.get(sid.pool)
        if ps is None or sid.pool not in self._fast_pools:
            return False
        member = self.reader.members.get(sid.pool, {}).get(sid)
        merged = sample if member is None else merge(sample, member)
        st = self.state.servers.get(sid)
        toward = engine.toward_transition(st, merged, ps)
        if (toward or engine.breaks_streak(st, merged, ps)) and self.on_evidence is not None:
            self.on_evidence()
        return toward

    async def _converge_all(
        self, decision: Decision, partial: Mapping[str, frozenset[ServerId]]
    ) -> None:
        """Converge every server that may need a change, up to ``max_in_flight`` at a time.

        Servers that should be in rotation and that lbhealthd holds nothing of need nothing
        (the common case, skipped without a task). The others run concurrently: their intents
        are written together before their commands go out, and the commands share the
        driver's connection. A server that not every endpoint of an HA pair lists (``partial``,
        by pool) gets no command: it would fail on the endpoints that lack it, every round.
        """
        actions: dict[ServerId, Action] = {}
        for a in decision.actions:
            actions.setdefault(a.server, a)
        owned = self.writer.owned
        work = []
        members = self.reader.members
        for sid, desired in decision.desired.items():
            if desired.admin is AdminState.READY and sid not in owned:
                if desired.weight is None:
                    continue
                live = members[sid.pool].get(sid)  # enforce_weights: a weight to set back?
                if live is None or live.weight == desired.weight:
                    continue
            if partial and sid in partial.get(sid.pool, ()):
                continue
            member = members[sid.pool].get(sid)
            if member is not None:
                work.append((sid, desired, member, actions.get(sid)))
        if not work:
            return
        limit = asyncio.Semaphore(max(1, self.writer.driver.max_in_flight))

        async def one(sid: ServerId, want: Desired, member: Member, action: Action | None) -> None:
            async with limit:
                await self.writer.converge(sid, want, member, action)

        await asyncio.gather(*(one(*w) for w in work))

    def _on_command(self, sid: ServerId, what: str, ok: bool, action: Action | None) -> None:
        self.metrics.lb_command(ok=ok)
        if ok:
            self.watch.audit_due = True
            if action is not None and what == "state":
                self.metrics.enforced(sid, action.kind, action.reason.rule)
            elif action is not None and action.kind is ActionKind.SET_WEIGHT:
                self.metrics.weight_corrected(sid, action.kind, action.reason.rule)

    def _owned_in(self, pool: str) -> list[str]:
        return sorted(str(s) for s in self.writer.owned if s.pool == pool)

    def _persist_engine_state(self, now: float, wall: float) -> None:
        """Stage what must survive a restart (drains' start, hold, flap level, restores)."""
        data = engine.to_persisted(self.state, now, wall)
        if data != self._persisted:
            self._persisted = data
            self.journal.stage_blob("engine", lambda: {"servers": data})

    def _report(
        self, decision: Decision | None, rounds: int, finished_at: float | None
    ) -> RoundReport:
        latest = self.scheduler.latest
        pools = []
        samples: dict[ServerId, Sample] = {}
        desired: dict[ServerId, Desired] = {}
        for pool in self.config.pools:
            name = pool.name
            members = self.reader.members.get(name, {})
            for sid in members:
                sample = latest(sid)
                if sample is not None:
                    samples[sid] = sample
            desired.update(self._desired.get(name, {}))
            watch = self.watch.pools.get(name)
            warnings: tuple[dict[str, str], ...] = ()
            if decision is not None:
                warnings = tuple(
                    {"rule": w.rule.value, "message": w.message}
                    for w in decision.warnings
                    if w.evidence.get("pool") == name
                )
            pools.append(
                PoolReport(
                    name=name,
                    settings=self.settings.pools[name],
                    members=members,
                    lb_error=self.reader.unavailable.get(name),
                    failed_endpoints=self.reader.failed_endpoints.get(name, {}),
                    blind=decision is not None and name in decision.blind_pools,
                    partial=self.reader.partial.get(name, frozenset()),
                    warnings=warnings,
                    balance=None if watch is None else watch.report,
                    findings=() if watch is None else tuple(watch.findings),
                )
            )
        return RoundReport(
            pools=tuple(pools),
            running=True,
            dry_run=self.dry_run,
            rounds=rounds,
            finished_at=finished_at,
            decision=decision,
            desired=desired,
            engine=self.state.servers,
            samples=samples,
            owned=dict(self.writer.owned),
            overrides=self.overrides,
            last_action=self.decisions.last_action,
            blocked=self.decisions.blocked,
            state_since=dict(self.reader.state_since),
            applied=dict(self.writer.last_set),
            config=self.config_status,
        )


def _fast_pools(config: Config) -> frozenset[str]:
    """The pools where fast confirmation is on."""
    return frozenset(p.name for p in config.pools if p.probe.confirm_interval < p.probe.interval)
