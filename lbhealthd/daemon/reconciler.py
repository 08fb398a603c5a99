"""One round of the daemon: read the LB, probe, decide, converge, record.

Level-triggered: every round compares what the engine wants with what the LB reports and sends
only the difference, so a lost command, a restarted HAProxy and a restarted daemon all heal the
same way. It only ever undoes what lbhealthd did itself: every change it makes is recorded as
*owned* in ``state_dir``. A server whose state or weight an operator changed by other means
(same LB process, a value lbhealthd did not set) is released, never fought: a server put back
in rotation by hand gets a keep-in override for ``daemon.manual_change_hold``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from lbhealthd.config import Config, PoolConfig
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.daemon.monitoring import Watch
from lbhealthd.drivers import Driver
from lbhealthd.engine import EngineState, Observation, ServerState, Settings, decide
from lbhealthd.engine.hysteresis import Phase
from lbhealthd.errors import DriverError, LbhealthdError
from lbhealthd.model import (
    Action,
    AdminState,
    Decision,
    Desired,
    Member,
    OpState,
    Override,
    OverrideKind,
    ServerId,
)
from lbhealthd.probes.aiohttp_prober import render_url
from lbhealthd.probes.lbstats import merge
from lbhealthd.probes.scheduler import ProbeScheduler, Target
from lbhealthd.store import OwnedEntry, Store
from lbhealthd.writer.journal import Journal

log = structlog.get_logger("lbhealthd.daemon.reconciler")

_EVENTS = {
    "drain": "server_drained",
    "restore": "server_restored",
    "maint": "server_maint",
    "step_down": "server_stepped_down",
}
HAND = "lb (changed by hand)"


class Reconciler:
    """Owns the engine state, the ownership records and the LB view between rounds."""

    def __init__(
        self,
        config: Config,
        driver: Driver,
        store: Store,
        scheduler: ProbeScheduler,
        *,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.driver = driver
        self.store = store
        self.journal = Journal(store, clock=store.clock)
        self.scheduler = scheduler
        self.mono = mono
        self.wall = wall
        self.config = config
        self.settings: Settings = config.engine_settings()
        self.owned: dict[ServerId, OwnedEntry] = store.load_owned()
        self.overrides: dict[ServerId, Override] = store.load_overrides()
        self.members: dict[str, dict[ServerId, Member]] = {}
        self.epochs: dict[str, str] = dict((store.load_blob("epochs") or {}).get("pools", {}))
        self.state = self._recover_engine_state()
        self.decision: Decision | None = None
        self.unavailable: dict[str, str] = {}  # pool -> error of the last failed read
        self.rounds = 0
        self.last_round_at: float | None = None
        self.last_action: dict[ServerId, tuple[str, str, str, float]] = {}  # kind, rule, why, wall
        self.last_blocked: dict[ServerId, tuple[str, str, str]] = {}  # kind, rule, why
        self.state_since: dict[ServerId, tuple[str, float]] = {}  # LB admin state, wall since
        self._blocked: set[tuple[ServerId, str, str]] = set()
        self._blind: set[str] = set()
        self._dry_logged: set[tuple[ServerId, str]] = set()
        self._agent_warned: set[ServerId] = set()
        self.watch = Watch(config)
        self.starved = False
        self.last_set: dict[ServerId, AdminState] = {}  # the last state the LB accepted
        self._state_error: str | None = None
        self._over_cap: set[str] = set()
        # State changes recorded but not yet confirmed (settled at the next read of the LB).
        self.pending: dict[ServerId, dict[str, str | None]] = {}
        for key, value in dict((store.load_blob("pending") or {}).get("servers", {})).items():
            try:
                self.pending[ServerId.parse(key)] = dict(value)
            except (LbhealthdError, TypeError, ValueError):
                log.warning("pending_entry_ignored", entry=key)
        self._recovering = set(self.pending)  # settled against the LB at its first read
        self.discovered: dict[str, list[str]] = dict(
            (store.load_blob("discovered") or {}).get("pools", {})
        )
        self._sent = 0  # LB commands sent (a change triggers an audit in the next round)

    @property
    def dry_run(self) -> bool:
        return self.config.daemon.dry_run

    def reload(self, config: Config) -> None:
        """Use a new, already validated config from the next round on."""
        self.config = config
        self.settings = config.engine_settings()
        self.watch.configure(config)

    # --- the round ------------------------------------------------------------------------

    async def tick(self, starved: float = 0.0) -> Decision:
        """Run one round; never raises for LB or probe trouble (that is logged and retried).

        ``starved`` is the worst event-loop lag (seconds) seen since the last round. Above
        ``daemon.max_loop_lag`` the round's samples are no evidence (a starved daemon measures
        its own lateness as latency and timeouts): the engine sees no new sample, so nothing is
        drained or restored, and ``daemon_starved`` is logged.
        """
        now, wall = self.mono(), self.wall()
        frozen = starved > self.config.daemon.max_loop_lag
        if frozen != self.starved:
            if frozen:
                log.error(
                    "daemon_starved",
                    lag_ms=round(starved * 1000, 1),
                    max_loop_lag_ms=round(self.config.daemon.max_loop_lag * 1000, 1),
                    note="this round's probes are not trusted: nothing drained or restored",
                )
            else:
                log.info("daemon_recovered", lag_ms=round(starved * 1000, 1))
            self.starved = frozen
        self._refresh_overrides(wall)
        read: list[PoolConfig] = []
        for pool in self.config.pools:
            if await self._read_pool(pool, now):
                read.append(pool)
        self._monitor(read, now)
        self.scheduler.sync(self._targets())
        observations = {
            sid: self._observe(sid, member, frozen)
            for pool in read
            for sid, member in self.members[pool.name].items()
        }
        settings = Settings({p.name: self.settings.pools[p.name] for p in read})
        names = {p.name for p in read}
        state, decision = decide(self.state, observations, self.overrides, settings, now)
        kept = {sid: st for sid, st in self.state.servers.items() if sid.pool not in names}
        self.state = EngineState({**kept, **state.servers})
        self.decision = decision
        self._log_decision(decision)
        await self._converge_all(decision)
        self._persist_engine_state(now, wall)
        await self.journal.sync()
        self.rounds += 1
        self.last_round_at = now
        return decision

    def _monitor(self, read: list[PoolConfig], now: float) -> None:
        """Balance every round; the audit after a change (made last round) or on its timer."""
        last = self.watch.last_audit
        due = (
            self.watch.audit_due
            or last is None
            or (now - last >= self.config.daemon.audit_interval)
        )
        for pool in read:
            members = self.members[pool.name]
            self.watch.balance(pool, members, now)
            if pool.servers is None and pool.name not in self.discovered and members:
                self.discovered[pool.name] = sorted(sid.server for sid in members)
                self._save_blob("discovered", lambda: {"pools": dict(self.discovered)})
                log.info(
                    "servers_recorded",
                    pool=pool.name,
                    servers=self.discovered[pool.name],
                    note="the audit expects this set from now on",
                )
            if due:
                owned = [sid for sid in self.owned if sid.pool == pool.name]
                self.watch.audit(pool, members, owned, self.discovered.get(pool.name))
        if due and read:
            self.watch.audit_due = False
            self.watch.last_audit = now

    def _refresh_overrides(self, wall: float) -> None:
        try:
            for gone in self.store.prune_expired(wall):
                log.info(
                    "override_expired",
                    server=str(gone.server),
                    kind=gone.kind.value,
                    who=gone.who,
                    reason=gone.reason,
                )
                self._record(gone.server, "override_expired", who=gone.who, reason=gone.reason)
            self.overrides = self.store.load_overrides()
            self._state_error = None
        except LbhealthdError as exc:
            if str(exc) != self._state_error:
                log.error(
                    "state_unreadable",
                    error=str(exc),
                    note="keeping the overrides read last; fix or move the file aside",
                )
            self._state_error = str(exc)

    async def _read_pool(self, pool: PoolConfig, now: float) -> bool:
        try:
            snap = await self.driver.snapshot(pool.name)
        except LbhealthdError as exc:
            if self.unavailable.get(pool.name) != str(exc):
                log.error("lb_unavailable", pool=pool.name, error=str(exc))
            self.unavailable[pool.name] = str(exc)
            return False
        if pool.name in self.unavailable:
            log.info("lb_available", pool=pool.name)
            del self.unavailable[pool.name]
        wanted = set(pool.servers) if pool.servers is not None else None
        members = {m.id: m for m in snap.members if wanted is None or m.id.server in wanted}
        previous = self.members.get(pool.name, {})
        for sid in sorted(members.keys() - previous.keys()):
            if previous:
                log.info("server_discovered", server=str(sid))
        for sid in sorted(previous.keys() - members.keys()):
            log.warning("server_vanished", server=str(sid))
        self.members[pool.name] = members
        wall = self.wall()
        for sid, member in members.items():
            if self.state_since.get(sid, ("",))[0] != member.admin.value:
                self.state_since[sid] = (member.admin.value, wall)
        for sid in previous.keys() - members.keys():
            self.state_since.pop(sid, None)
        restarted = self._note_epoch(pool.name, snap.epoch)
        for sid, member in members.items():
            if sid in self._recovering:
                self._settle_pending(sid, member)
            elif sid not in self.pending and not restarted:
                self._notice_hand_change(sid, member)
        return True

    def _note_epoch(self, pool: str, epoch: str) -> bool:
        """True when the LB lost its runtime state since the last read (or it is unknown)."""
        before = self.epochs.get(pool)
        if before == epoch:
            return False
        if before is not None:
            log.warning(
                "lb_restarted",
                pool=pool,
                before=before,
                now=epoch,
                owned=sorted(str(s) for s in self.owned if s.pool == pool),
                note="runtime changes were lost; re-applying what lbhealthd owns",
            )
        self.epochs[pool] = epoch
        self._save_blob("epochs", lambda: {"pools": dict(self.epochs)})
        return True

    def _notice_hand_change(self, sid: ServerId, member: Member) -> None:
        owned = self.owned.get(sid)
        if owned is None or not member.consistent:
            return
        if member.has_agent and owned.admin is not AdminState.READY:
            if member.admin is not owned.admin:
                log.warning(
                    "agent_undid_state",
                    server=str(sid),
                    ours=owned.admin.value,
                    now=member.admin.value,
                    note="re-applying; consider `disable agent`",
                )
            return  # an agent, not an operator: lbhealthd re-applies its state
        if owned.admin is not AdminState.READY and member.admin is not owned.admin:
            log.warning(
                "operator_changed_state",
                server=str(sid),
                ours=owned.admin.value,
                now=member.admin.value,
                note="released: lbhealthd will not undo it",
            )
            self._record(sid, "released", reason=f"state set to {member.admin.value} by hand")
            self._disown(sid)
            self._forget_phase(sid)
            override = self.overrides.get(sid)
            if override is not None and override.kind is not OverrideKind.READY:
                self.store.remove_override(sid)
            if member.admin is AdminState.READY:
                self._keep_in(sid)
        elif owned.weight is not None and member.weight != owned.weight:
            log.warning(
                "operator_changed_weight",
                server=str(sid),
                ours=owned.weight,
                now=member.weight,
                note="slow start stopped for this server",
            )
            self._record(sid, "released", reason=f"weight set to {member.weight} by hand")
            self._disown(sid)

    def _keep_in(self, sid: ServerId) -> None:
        hold = self.config.daemon.manual_change_hold
        wall = self.wall()
        override = Override(
            sid,
            OverrideKind.READY,
            "put back in rotation by hand",
            HAND,
            wall,
            wall + hold if hold > 0 else None,
        )
        try:
            self.store.put_override(override)
        except LbhealthdError as exc:
            log.error("state_write_failed", error=str(exc))
        self.overrides[sid] = override

    def _forget_phase(self, sid: ServerId) -> None:
        st = self.state.servers.get(sid)
        if st is not None:
            servers = dict(self.state.servers)
            servers[sid] = st._replace(
                phase=Phase.IN_SERVICE, manual=None, drained_at=None, bad=0, good=0
            )
            self.state = EngineState(servers)

    def _targets(self) -> dict[ServerId, Target]:
        targets = {}
        for pool in self.config.pools:
            probe = pool.probe
            for sid, m in self.members.get(pool.name, {}).items():
                url = render_url(probe.url, name=sid.server, address=m.address, port=m.port)
                targets[sid] = Target(url, probe.interval, probe.timeout, probe.load_fields)
        return targets

    def _observe(self, sid: ServerId, member: Member, frozen: bool = False) -> Observation:
        sample = None if frozen else self.scheduler.latest(sid)
        if sample is not None:
            sample = merge(sample, member)
        owned = self.owned.get(sid)
        ours = owned is not None and owned.admin is not AdminState.READY
        out = member.admin is not AdminState.READY or member.op in (OpState.DOWN, OpState.STOPPING)
        return Observation(sample, external_out=out and not ours and sid not in self.overrides)

    # --- converging ---------------------------------------------------------------------------

    async def _converge_all(self, decision: Decision) -> None:
        """Converge every server that may need a change, up to ``max_in_flight`` at a time.

        Servers that should be in rotation and that lbhealthd owns nothing of need nothing
        (the common case, skipped without a task). The others run concurrently: their intents
        are staged together and written once before their commands go out, and the commands
        share the driver's connection.
        """
        actions: dict[ServerId, Action] = {}
        for a in decision.actions:
            actions.setdefault(a.server, a)
        work = []
        for sid, desired in decision.desired.items():
            if desired.admin is AdminState.READY and sid not in self.owned:
                continue
            member = self.members[sid.pool].get(sid)
            if member is not None:
                work.append((sid, desired, member, actions.get(sid)))
        if not work:
            return
        limit = asyncio.Semaphore(max(1, self.driver.max_in_flight))

        async def one(sid: ServerId, want: Desired, member: Member, action: Action | None) -> None:
            async with limit:
                await self._converge(sid, want, member, action)

        await asyncio.gather(*(one(*w) for w in work))

    async def _converge(
        self, sid: ServerId, want: Desired, member: Member, action: Action | None
    ) -> None:
        owned = self.owned.get(sid)
        if want.admin is not AdminState.READY:
            if member.admin is want.admin and member.consistent:
                if owned is None or owned.admin is not want.admin:
                    self._own(sid, want.admin, action)
                self._settled(sid)
                return
            if owned is None and member.admin is not AdminState.READY and not want.manual:
                return  # out by someone else's hand: never touched
            # Ownership first: a daemon killed right after the command still knows it was its.
            # A command that failed stays intended (and is sent again next round): it may have
            # reached part of an HA pair, and that part is ours to repair or undo.
            self._intend(sid, want.admin, owned)
            if await self._send(sid, member, "state", want.admin, action):
                self._own(sid, want.admin, action)
                self._settled(sid)
            return
        if owned is not None and owned.admin is not AdminState.READY:
            weight = self._weight(want, member)
            if weight is not None and weight != member.weight:
                await self._send(sid, member, "weight", weight, action)
            if member.admin is not AdminState.READY or not member.consistent:
                self._intend(sid, AdminState.READY, owned)
                sent = await self._send(sid, member, "state", AdminState.READY, action)
                if not sent:
                    self._settled(sid)
                    return
            if weight is not None:
                self._own(sid, AdminState.READY, action, weight=weight)
            else:
                self._disown(sid)
            self._settled(sid)
            return
        if owned is not None and owned.weight is not None:
            weight = self._weight(want, member)
            full = weight is None
            target = member.initial_weight if weight is None else weight
            if (target != member.weight or not member.consistent) and not await self._send(
                sid, member, "weight", target, action
            ):
                return
            if full:
                self._disown(sid)
                log.info("slow_start_done", server=str(sid), weight=target)
            else:
                self._own(sid, AdminState.READY, action, weight=target)

    def _weight(self, want: Desired, member: Member) -> int | None:
        """The ramped weight to set, or None when the server should have its full weight.

        The ramp is geometric (a constant ratio per step of the share) from a start weight to
        the server's configured weight. The start is ``slow_start_floor`` of that weight, but
        never above the weight of the pool's other servers (their median): a server weighted
        100 among servers weighted 1 starts at 1, not at 10 = 10 times their share.
        """
        full = member.initial_weight
        if want.weight_fraction >= 1.0 or full <= 0:
            return None
        floor = self.settings.pools[member.id.pool].slow_start_floor
        start = max(1.0, min(full * floor, self._reference_weight(member)))
        span = 1.0 - floor
        progress = 1.0 if span <= 0 else min(1.0, max(0.0, (want.weight_fraction - floor) / span))
        weight: float = start * (full / start) ** progress
        return max(1, min(full, round(weight)))

    def _reference_weight(self, member: Member) -> float:
        """The median weight of the pool's other servers in rotation at their full weight."""
        weights = sorted(
            m.weight
            for sid, m in self.members.get(member.id.pool, {}).items()
            if sid != member.id
            and m.admin is AdminState.READY
            and m.weight > 0
            and (sid not in self.owned or self.owned[sid].weight is None)
        )
        if not weights:
            return float(member.initial_weight)
        mid = len(weights) // 2
        return float(weights[mid] if len(weights) % 2 else (weights[mid - 1] + weights[mid]) / 2)

    async def _send(
        self,
        sid: ServerId,
        member: Member,
        what: str,
        value: AdminState | int,
        action: Action | None,
    ) -> bool:
        shown = value.value if isinstance(value, AdminState) else value
        before = member.admin.value if what == "state" else member.weight
        fields: dict[str, Any] = {"server": str(sid), "set": what, "from": before, "to": shown}
        if action is not None:
            fields.update(rule=action.reason.rule.value, reason=action.reason.message)
        if what == "state" and member.has_agent and sid not in self._agent_warned:
            self._agent_warned.add(sid)
            log.warning(
                "agent_may_undo",
                server=str(sid),
                note="this server has an HAProxy agent-check: an agent reply of ready, "
                "drain or maint overrides admin states set by anyone else; lbhealthd "
                "re-applies its own every round",
            )
        if self.dry_run:
            if (sid, f"{what}={shown}") not in self._dry_logged:
                self._dry_logged.add((sid, f"{what}={shown}"))
                log.info("dry_run_skipped", **fields)
            return False
        # Write-ahead: what _intend staged for this server (and for every server converging
        # with it) is durable before the command leaves.
        await self.journal.sync()
        started = self.mono()
        try:
            if isinstance(value, AdminState):
                await self.driver.set_state(sid, value)
            else:
                await self.driver.set_weight(sid, value)
        except DriverError as exc:
            self.metrics.lb_command(ok=False)
            log.error("lb_command_failed", **fields, error=str(exc))
            return False
        self.metrics.lb_command(ok=True)
        if isinstance(value, AdminState):
            self.last_set[sid] = value
        if action is not None and what == "state":
            self.metrics.enforced(sid, action.kind, action.reason.rule)
        log.info("lb_command", **fields, ms=round((self.mono() - started) * 1000, 1))
        self._sent += 1
        self.watch.audit_due = True
        self._record(
            sid,
            f"set_{what}",
            value=shown,
            previous=before,
            rule=fields.get("rule", "reconcile"),
            reason=fields.get("reason", "converging to the desired state"),
            who=_who(action),
        )
        # The record of a command that reached the LB is on disk before the round goes on, as
        # the intent was before it left; servers converging together share this write.
        await self.journal.sync()
        return True

    # --- ownership and persistence ------------------------------------------------------------

    def _own(
        self, sid: ServerId, admin: AdminState, action: Action | None, weight: int | None = None
    ) -> None:
        previous = self.owned.get(sid)
        reason = action.reason.message if action else (previous.reason if previous else "")
        since = previous.since if previous and previous.admin is admin else self.wall()
        entry = OwnedEntry(sid, admin, since, reason, weight)
        if previous != entry:
            self.owned[sid] = entry
            self._save_owned()

    def _intend(self, sid: ServerId, admin: AdminState, previous: OwnedEntry | None) -> None:
        """Record, before sending it, that a state change is under way (see _settle_pending)."""
        if self.dry_run:
            return
        self.pending[sid] = {
            "to": admin.value,
            "previous": None if previous is None else previous.admin.value,
        }
        if admin is not AdminState.READY:
            self.owned[sid] = OwnedEntry(
                sid, admin, self.wall(), "change under way", previous.weight if previous else None
            )
            self._save_owned()
        self._save_blob("pending", self._pending_blob)

    def _settled(self, sid: ServerId) -> None:
        if self.pending.pop(sid, None) is not None:
            self._save_blob("pending", self._pending_blob)

    def _settle_pending(self, sid: ServerId, member: Member) -> bool:
        """After a crash mid-change: the LB says whether the change landed. True if settled."""
        self._recovering.discard(sid)
        entry = self.pending.get(sid)
        if entry is None:
            return False
        landed = member.admin.value == entry["to"]
        log.warning(
            "change_recovered",
            server=str(sid),
            to=entry["to"],
            landed=landed,
            note="the daemon stopped between recording and confirming this change",
        )
        if entry["to"] == AdminState.READY.value:
            if landed:
                self._disown(sid)
                self._forget_phase(sid)
        elif not landed:
            previous = entry.get("previous")
            if previous is None:
                self._disown(sid)
                self._forget_phase(sid)  # never happened: decide afresh from new samples
            else:
                self.owned[sid] = OwnedEntry(sid, AdminState(previous), self.wall(), "recovered")
                self._save_owned()
        self._settled(sid)
        return True

    def _disown(self, sid: ServerId) -> None:
        if self.owned.pop(sid, None) is not None:
            self._save_owned()

    # Writes to state_dir are staged in the journal and made durable together: before a
    # command is sent (write-ahead), once it has reached the LB (its record), and at the end
    # of every round.

    def _save_owned(self) -> None:
        self.journal.stage_owned(self.owned)

    def _save_blob(self, name: str, produce: Callable[[], dict[str, Any]]) -> None:
        self.journal.stage_blob(name, produce)

    def _pending_blob(self) -> dict[str, Any]:
        return {"servers": {str(k): v for k, v in self.pending.items()}}

    def record(self, sid: ServerId, action: str, **fields: Any) -> None:
        """Add to the action log (written by the end of the round); failures are logged."""
        self._record(sid, action, **fields)

    def _record(self, sid: ServerId, action: str, **fields: Any) -> None:
        self.journal.stage_record(server=str(sid), action=action, dry_run=self.dry_run, **fields)

    async def close(self) -> None:
        """Write what is still staged (the daemon calls it when it stops)."""
        await self.journal.sync()

    def _persist_engine_state(self, now: float, wall: float) -> None:
        """Persist what must survive a restart: drains' start, hold, flap level, restores."""

        def to_wall(t: float | None) -> float | None:
            return None if t is None else round(wall - (now - t), 3)

        data = {
            str(sid): {
                "phase": st.phase.value,
                "drained_at": to_wall(st.drained_at),
                "hold": st.hold,
                "flap_level": st.flap_level,
                "restored_at": to_wall(st.restored_at),
                "fraction": st.fraction,
            }
            for sid, st in sorted(self.state.servers.items())
            if st.phase is not Phase.IN_SERVICE
            or st.flap_level
            or st.restored_at is not None
            or st.fraction < 1.0
        }
        if data != getattr(self, "_persisted", None):
            self._persisted = data
            self._save_blob("engine", lambda: {"servers": data})

    def _recover_engine_state(self) -> EngineState:
        """Rebuild drains and flap memory from state_dir; streaks start afresh (observe first)."""
        blob = self.store.load_blob("engine") or {}
        now, wall = self.mono(), self.wall()

        def to_mono(t: object) -> float | None:
            return None if not isinstance(t, int | float) else now - (wall - float(t))

        servers: dict[ServerId, ServerState] = {}
        for key, raw in dict(blob.get("servers", {})).items():
            try:
                sid = ServerId.parse(key)
                phase = Phase(raw["phase"])
            except (LbhealthdError, KeyError, ValueError, TypeError):
                log.warning("engine_state_entry_ignored", entry=key)
                continue
            if phase is not Phase.IN_SERVICE and self.owned.get(sid) is None:
                phase = Phase.IN_SERVICE  # not ours in the LB any more (restored meanwhile)
            servers[sid] = ServerState(
                phase=phase,
                drained_at=to_mono(raw.get("drained_at")),
                hold=float(raw.get("hold") or 0.0),
                flap_level=int(raw.get("flap_level") or 0),
                restored_at=to_mono(raw.get("restored_at")),
                fraction=min(1.0, max(0.0, float(raw.get("fraction", 1.0) or 1.0))),
                ramp_at=now,
                manual=self.overrides[sid].kind
                if phase is Phase.MANUAL and sid in self.overrides
                else None,
            )
        # Out-of-rotation states lbhealthd owns but the engine has no memory of (a drain made by
        # the on-call command while the daemon was down): out, and back only through `rise`.
        for sid, entry in self.owned.items():
            if entry.admin is not AdminState.READY and sid not in servers:
                override = self.overrides.get(sid)
                manual = override is not None and override.kind is not OverrideKind.READY
                servers[sid] = ServerState(
                    phase=Phase.MANUAL if manual else Phase.DRAINED,
                    drained_at=now - max(0.0, wall - entry.since),
                    manual=override.kind if manual and override else None,
                )
        return EngineState(servers)

    # --- logging --------------------------------------------------------------------------

    def _log_decision(self, decision: Decision) -> None:
        wall = self.wall()
        for action in decision.actions:
            self.last_action[action.server] = (
                action.kind.value,
                action.reason.rule.value,
                action.reason.message,
                wall,
            )
        self.last_blocked = {
            b.server: (b.kind.value, b.reason.rule.value, b.reason.message)
            for b in decision.blocked
        }
        for action in decision.actions:
            log.info(
                _EVENTS[action.kind.value],
                server=str(action.server),
                rule=action.reason.rule.value,
                reason=action.reason.message,
                evidence=dict(action.reason.evidence),
                dry_run=self.dry_run,
            )
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
        for pool in sorted(decision.blind_pools - self._blind):
            reason = next((w for w in decision.warnings if w.evidence.get("pool") == pool), None)
            log.error(
                "pool_blind",
                pool=pool,
                reason=reason.message if reason else "",
                evidence=dict(reason.evidence) if reason else {},
            )
        for pool in sorted(self._blind - decision.blind_pools):
            log.info("pool_sight_restored", pool=pool)
        self._blind = set(decision.blind_pools)
        over_cap = set()
        for w in decision.warnings:
            if w.rule.value == "override_over_cap":
                over_cap.add(w.message)
                if w.message not in self._over_cap:
                    log.warning("override_over_cap", reason=w.message, evidence=dict(w.evidence))
        self._over_cap = over_cap


def _who(action: Action | None) -> str:
    if action is None:
        return "lbhealthd"
    who = action.reason.evidence.get("who")
    return str(who) if who else "lbhealthd"
