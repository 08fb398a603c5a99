"""The one path by which lbhealthd changes a load balancer.

Every change — the daemon converging a round, an operator's drain or restore through the
control socket or with the daemon down, ``audit --fix`` — goes through :class:`LbWriter`, which
guarantees, whoever calls it:

- **Write-ahead.** A state change that takes a server out is recorded as *owned* (and as
  *pending*, with the state it replaces) and made durable before the command leaves, so a
  process killed right after the command still knows the change was its own. A change that
  failed stays pending: it may have reached part of an HA pair, and that part is ours to repair
  or undo.
- **Ownership after.** Once the LB took a command, the ownership record says what lbhealthd
  holds (a state, or a slow-start weight) and the action log says what was done, by whom, under
  which rule; both are durable before the caller goes on.
- **Only its own.** A server taken out by someone else's hand is never touched unless an
  operator's explicit override asks for it (``Desired.manual``).
- **Dry run.** Nothing is sent; each would-be command is logged once.

After a crash, :meth:`settle` compares a pending change with what the LB shows and resolves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from lbhealthd.drivers import Driver
from lbhealthd.errors import DriverError, LbhealthdError
from lbhealthd.model import Action, ActionKind, AdminState, ByHand, Desired, Member, ServerId
from lbhealthd.store import OwnedEntry
from lbhealthd.writer.journal import Journal

log = structlog.get_logger("lbhealthd.writer")

__all__ = ["LbWriter", "Why"]


@dataclass(frozen=True, slots=True)
class Why:
    """Why a command is sent: the rule, a one-line reason, who asked."""

    rule: str = "reconcile"
    reason: str = "converging to the desired state"
    who: str = "lbhealthd"

    @classmethod
    def of(cls, action: Action | None) -> Why:
        if action is None:
            return cls()
        who = action.reason.evidence.get("who")
        return cls(
            action.reason.rule.value, action.reason.message, str(who) if who else "lbhealthd"
        )


#: Called after every command: (server, what was set, ok, the action it carried out or None).
CommandHook = Callable[[ServerId, str, bool, Action | None], None]


class LbWriter:
    """Changes servers in the LB with write-ahead, ownership and an action record."""

    def __init__(
        self,
        driver: Driver,
        journal: Journal,
        *,
        dry_run: bool = False,
        path: str = "daemon",
        mono: Callable[[], float] = time.monotonic,
        on_command: CommandHook | None = None,
    ) -> None:
        self.driver = driver
        self.journal = journal
        self.dry_run = dry_run
        self.path = path  # recorded with every action: daemon, direct (CLI), audit
        self.mono = mono
        self.on_command = on_command
        store = journal.store
        self.owned: dict[ServerId, OwnedEntry] = store.load_owned()
        # State changes recorded but not yet confirmed by a read of the LB (see ``settle``).
        self.pending: dict[ServerId, dict[str, str | None]] = {}
        for key, value in dict((store.load_blob("pending") or {}).get("servers", {})).items():
            try:
                self.pending[ServerId.parse(key)] = dict(value)
            except (LbhealthdError, TypeError, ValueError):
                log.warning("pending_entry_ignored", entry=key)
        self._recovering = set(self.pending)  # settled against the LB at its first read
        self.last_set: dict[ServerId, AdminState] = {}  # the last state the LB accepted
        self.last_error: dict[ServerId, str] = {}  # why the last command failed, until one works
        self._dry_logged: set[tuple[ServerId, str]] = set()
        self._agent_warned: set[ServerId] = set()
        self._steps: dict[ServerId, int] = {}  # slow-start steps sent, per ramp under way

    @property
    def wall(self) -> Callable[[], float]:
        return self.journal.store.clock

    # --- what lbhealthd holds ----------------------------------------------------------------

    def holds_out(self, sid: ServerId) -> bool:
        """True when lbhealthd took this server out of rotation itself."""
        entry = self.owned.get(sid)
        return entry is not None and entry.admin is not AdminState.READY

    def recovering(self, sid: ServerId) -> bool:
        """True while a change recorded before a crash waits to be compared with the LB."""
        return sid in self._recovering

    def held(self) -> set[ServerId]:
        """The servers a read must be compared with: those lbhealthd holds something of, and
        those with a change recorded before a crash. (A server lbhealthd holds nothing of has
        no hand change to notice.)"""
        return self.owned.keys() | self._recovering

    def has_pending(self, sid: ServerId) -> bool:
        return sid in self.pending

    def release(self, sid: ServerId) -> None:
        """Forget what lbhealthd held of this server (an operator took it over)."""
        if self.owned.pop(sid, None) is not None:
            self.journal.stage_owned(self.owned)

    def drop_pending(self, sid: ServerId) -> None:
        """Forget a change of ``sid`` recorded but never confirmed (the server is gone)."""
        self._recovering.discard(sid)
        self._settled(sid)

    def notice_hand_change(self, sid: ServerId, member: Member) -> ByHand | None:
        """Compare what lbhealthd set with what the LB shows; if an operator changed it by
        other means, let go of it (logged and recorded) and say what changed. An agent-check
        undoing a state is not an operator: lbhealthd re-applies its own."""
        owned = self.owned.get(sid)
        if owned is None or not member.consistent:
            return None
        if member.has_agent and owned.admin is not AdminState.READY:
            if member.admin is not owned.admin:
                log.warning(
                    "agent_undid_state",
                    server=str(sid),
                    ours=owned.admin.value,
                    now=member.admin.value,
                    note="re-applying; consider `disable agent`",
                )
            return None
        if owned.admin is not AdminState.READY and member.admin is not owned.admin:
            log.warning(
                "operator_changed_state",
                server=str(sid),
                ours=owned.admin.value,
                now=member.admin.value,
                note="released: lbhealthd will not undo it",
            )
            self.record(sid, "released", reason=f"state set to {member.admin.value} by hand")
            self.release(sid)
            return ByHand(member.admin)
        if owned.weight is not None and member.weight != owned.weight:
            log.warning(
                "operator_changed_weight",
                server=str(sid),
                ours=owned.weight,
                now=member.weight,
                note="slow start stopped for this server",
            )
            self.record(sid, "released", reason=f"weight set to {member.weight} by hand")
            self.release(sid)
            return ByHand(None, weight=True)
        return None

    def settle(self, sid: ServerId, member: Member) -> bool:
        """After a crash mid-change, the LB says whether the change landed; resolve it.

        True when the engine's memory of the server must be forgotten (the server is in
        rotation after all, and decided afresh from new samples)."""
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
        forget = False
        if entry["to"] == AdminState.READY.value:
            if landed:
                forget = True
                if member.weight != member.initial_weight:
                    # Back in rotation at a slow-start weight: lbhealthd still holds that
                    # weight, and sets the full one back.
                    self._own_entry(
                        OwnedEntry(sid, AdminState.READY, self.wall(), "recovered", member.weight)
                    )
                else:
                    self.release(sid)
        elif not landed:
            previous = entry.get("previous")
            if previous is None:
                self.release(sid)
                forget = True  # never happened
            else:
                weight = entry.get("previous_weight")
                self._own_entry(
                    OwnedEntry(
                        sid,
                        AdminState(previous),
                        self.wall(),
                        "recovered",
                        int(weight) if weight is not None else None,
                    )
                )
        self._settled(sid)
        return forget

    # --- converging one server ---------------------------------------------------------------

    async def converge(
        self, sid: ServerId, want: Desired, member: Member, action: Action | None
    ) -> None:
        """Bring one server to ``want``: its admin state, and ``want.weight`` while it ramps
        or when enforce_weights sets it back."""
        owned = self.owned.get(sid)
        if want.admin is not AdminState.READY:
            if member.admin is want.admin and member.consistent:
                if owned is None or owned.admin is not want.admin:
                    self._own(sid, want.admin, action)
                self._settled(sid)
                return
            if owned is None and member.admin is not AdminState.READY and not want.manual:
                return  # out by someone else's hand: never touched
            self._intend(sid, want.admin, owned)
            if await self.command(sid, member, "state", want.admin, action):
                self._own(sid, want.admin, action)
                self._settled(sid)
            return
        if owned is not None and owned.admin is not AdminState.READY:
            weight = want.weight
            if (
                weight is not None
                and weight != member.weight
                and not await self.command(sid, member, "weight", weight, action)
            ):
                return  # still out: the next round sends both again
            if member.admin is not AdminState.READY or not member.consistent:
                self._intend(sid, AdminState.READY, owned)
                if not await self.command(sid, member, "state", AdminState.READY, action):
                    self._settled(sid)
                    return
            if weight is not None and want.weight_fraction < 1.0:
                self._own(sid, AdminState.READY, action, weight=weight)
            else:
                self.release(sid)
            self._settled(sid)
            return
        if owned is not None and owned.weight is not None:
            # The ramp ends at the configured weight, or at the expected one (enforce_weights).
            full = want.weight is None or want.weight_fraction >= 1.0
            target = member.initial_weight if want.weight is None else want.weight
            # A ramp's steps are logged at debug level and not recorded one by one: one line
            # when it starts (the restore's commands), one when it ends, with the count.
            step = not full and (action is None or action.kind is not ActionKind.STEP_DOWN)
            if (target != member.weight or not member.consistent) and not await self.command(
                sid, member, "weight", target, action, step=step
            ):
                return
            if full:
                self.release(sid)
                steps = self._steps.pop(sid, 0)
                log.info("slow_start_done", server=str(sid), weight=target, steps=steps)
                self.record(sid, "slow_start_done", value=target, steps=steps)
            else:
                self._own(sid, AdminState.READY, action, weight=target)
            return
        if want.manual and member.admin is not AdminState.READY:
            # An operator asked for it in rotation: a state lbhealthd does not own is set too.
            await self.command(sid, member, "state", AdminState.READY, action)
        if want.weight is not None and want.weight != member.weight:
            # enforce_weights: a weight set back to the expected one; nothing to own (a weight
            # set by hand again is set back again). Not on a mere disagreement of an HA pair's
            # endpoints: it may be their admin states, which a weight would not end (the audit
            # reports it).
            await self.command(sid, member, "weight", want.weight, action)

    async def command(
        self,
        sid: ServerId,
        member: Member,
        what: str,
        value: AdminState | int,
        action: Action | None = None,
        why: Why | None = None,
        *,
        step: bool = False,
    ) -> bool:
        """Send one command (``what`` is "state" or "weight") and record it. True if the LB
        took it; a failure is logged and counted, never raised. ``step``: one step of a
        slow-start ramp, logged at debug level and counted instead of recorded."""
        why = why or Why.of(action)
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
        # Write-ahead: what was staged for this server (and for every server converging with
        # it) is durable before the command leaves.
        await self.journal.sync()
        started = self.mono()
        try:
            if isinstance(value, AdminState):
                await self.driver.set_state(sid, value)
            else:
                await self.driver.set_weight(sid, value)
        except DriverError as exc:
            self.last_error[sid] = str(exc)
            if self.on_command is not None:
                self.on_command(sid, what, False, action)
            log.error("lb_command_failed", **fields, error=str(exc))
            return False
        self.last_error.pop(sid, None)
        if isinstance(value, AdminState):
            self.last_set[sid] = value
        if self.on_command is not None:
            self.on_command(sid, what, True, action)
        ms = round((self.mono() - started) * 1000, 1)
        if step:
            log.debug("lb_command", **fields, ms=ms)
            self._steps[sid] = self._steps.get(sid, 0) + 1
            return True
        log.info("lb_command", **fields, ms=ms)
        self.record(
            sid,
            f"set_{what}",
            value=shown,
            previous=before,
            rule=why.rule,
            reason=why.reason,
            who=why.who,
        )
        # The record of a command that reached the LB is durable before the caller goes on,
        # as the intent was before it left; servers converging together share this write.
        await self.journal.sync()
        return True

    def record(self, sid: ServerId, action: str, **fields: Any) -> None:
        """Add to the action log (durable at the next ``flush``)."""
        fields.setdefault("path", self.path)
        self.journal.stage_record(server=str(sid), action=action, dry_run=self.dry_run, **fields)

    async def flush(self) -> None:
        """Make everything staged durable."""
        await self.journal.sync()

    # --- ownership ---------------------------------------------------------------------------

    def _own(
        self, sid: ServerId, admin: AdminState, action: Action | None, weight: int | None = None
    ) -> None:
        previous = self.owned.get(sid)
        reason = action.reason.message if action else (previous.reason if previous else "")
        since = previous.since if previous and previous.admin is admin else self.wall()
        entry = OwnedEntry(sid, admin, since, reason, weight)
        if previous != entry:
            self.owned[sid] = entry
            self.journal.stage_owned(self.owned)

    def _own_entry(self, entry: OwnedEntry) -> None:
        self.owned[entry.server] = entry
        self.journal.stage_owned(self.owned)

    def _intend(self, sid: ServerId, admin: AdminState, previous: OwnedEntry | None) -> None:
        """Record, before sending it, that a state change is under way (see ``settle``)."""
        if self.dry_run:
            return
        self.pending[sid] = {
            "to": admin.value,
            "previous": None if previous is None else previous.admin.value,
            "previous_weight": None
            if previous is None or previous.weight is None
            else str(previous.weight),
        }
        if admin is not AdminState.READY:
            self.owned[sid] = OwnedEntry(
                sid, admin, self.wall(), "change under way", previous.weight if previous else None
            )
            self.journal.stage_owned(self.owned)
        self.journal.stage_blob("pending", self._pending_blob)

    def _settled(self, sid: ServerId) -> None:
        if self.pending.pop(sid, None) is not None:
            self.journal.stage_blob("pending", self._pending_blob)

    def _pending_blob(self) -> dict[str, Any]:
        return {"servers": {str(k): v for k, v in self.pending.items()}}
