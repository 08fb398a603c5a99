"""An operator's drain and restore, written once for both paths that carry them out.

- With the daemon running, the control socket calls :func:`drain` and :func:`restore` with
  ``apply=False``: the override is recorded and the daemon's next round carries it out
  (the round is started at once and the caller waits for it).
- With the daemon down, ``lbhealthd drain`` / ``restore`` call them with ``apply=True``: the
  same override is recorded and the change is made at once through the LB writer, with the
  same write-ahead and ownership, so the daemon finds it owned when it starts.

Semantics, whichever path:
- A drain (or maint) names a reason; it is refused (:class:`CapRefused`, naming the cap) if
  taking a server in rotation out would break ``max_drained`` or ``min_in_service``, unless
  forced. Out counts the drains and maints recorded but not yet carried out, and the check and
  the record happen under state_dir's writers' lock, so concurrent drains (in one daemon or in
  several on-call commands) cannot each see room for one more. ``for_s`` makes it expire.
- ``for_s`` is a number of seconds from 0 to :data:`MAX_FOR` (365 days); 0 or None means no
  expiry. Anything else (infinite, NaN, negative, longer, not a number) is refused with
  :class:`InvalidDuration` before anything is recorded: an expiry must be a time the state
  files, the logs and the on-call commands can all write.
- A refusal names the cap and every other server out with who took it out (an override's
  author and reason, lbhealthd's own reason, or a state lbhealthd did not set); a forced drain
  that leaves the pool beyond a cap says so in ``Done.warnings``.
- A restore removes any override. A server lbhealthd holds out gets a keep-in override for
  ``for_s`` (default ``daemon.manual_change_hold``) so it is not drained again at once; a server
  out by someone else's hand is set ready (the operator asked for exactly that). Its optional
  reason is recorded (``restore_requested`` in the action log) and is the keep-in's reason.
- With ``apply`` (no daemon runs to finish a slow-start ramp), a restore also sets back the
  full weight (:func:`full_weight`) of a server whose weight lbhealthd lowered, and says so;
  a weight lbhealthd did not set is left, and said to be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from lbhealthd.config import Config
from lbhealthd.engine import governor
from lbhealthd.errors import CapRefused, InvalidDuration, UnknownServer
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Desired,
    Member,
    Override,
    OverrideKind,
    Reason,
    Rule,
    ServerId,
)
from lbhealthd.report import out_text
from lbhealthd.store import OwnedEntry, Store
from lbhealthd.times import iso_utc, who_text
from lbhealthd.writer import LbWriter

log = structlog.get_logger("lbhealthd.overrides")

__all__ = [
    "MAX_FOR",
    "MAX_FOR_TEXT",
    "Done",
    "check_caps",
    "drain",
    "find_member",
    "full_weight",
    "restore",
    "seconds",
]

MAX_FOR = 365 * 86400.0  # the longest override with an expiry; without one it lasts until restored
MAX_FOR_TEXT = "365d"


@dataclass(frozen=True, slots=True)
class Done:
    """What a drain or restore did: the override in force (if any) and notes for the caller."""

    override: Override | None
    notes: tuple[str, ...] = ()
    lb_error: str | None = None  # the LB refused the change (direct path only)
    warnings: tuple[str, ...] = ()  # what the caller must know: a pool left beyond its caps


def seconds(value: object, name: str = "for_s") -> float | None:
    """``value`` as an override's duration: None for no expiry (None or 0), else seconds up
    to MAX_FOR; InvalidDuration naming ``name`` for anything else."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 <= value <= MAX_FOR)
    ):
        raise InvalidDuration(
            f"{name} must be a number of seconds from 0 to {MAX_FOR:.0f} ({MAX_FOR_TEXT}), "
            f"got {value!r}; leave it out for an override that lasts until restored"
        )
    return float(value) if value else None


def find_member(config: Config, sid: ServerId, members: Mapping[ServerId, Member]) -> Member:
    """The member for ``sid``; UnknownServer listing the pool's servers if there is none."""
    names = [p.name for p in config.pools]
    if sid.pool not in names:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config (pools: {', '.join(names)})")
    member = members.get(sid)
    if member is not None:
        return member
    listed = ", ".join(sorted(s.server for s in members)) or "none"
    raise UnknownServer(f"no server {sid.server!r} in pool {sid.pool} (servers: {listed})")


def check_caps(
    config: Config,
    sid: ServerId,
    members: Mapping[ServerId, Member],
    recorded: Mapping[ServerId, Override] | None = None,
    now: float = 0.0,
    owned: Mapping[ServerId, OwnedEntry] | None = None,
) -> None:
    """Raise CapRefused, naming the cap and the servers out and who took them out, if taking
    ``sid`` out breaks the pool's caps.

    Out counts the servers out of rotation in the LB and those with a drain or maint override
    in ``recorded`` not expired at wall time ``now``: recorded, they go out at the next round
    (or the next command), whatever the LB showed when ``members`` was read. ``owned`` (what
    lbhealthd took out itself) only names who took a server out."""
    broken = _cap_broken(config, sid, members, recorded or {}, now)
    if broken is None:
        return
    rule, budget, out = broken
    settings = config.engine_settings().pools[sid.pool]
    if rule is Rule.MAX_DRAINED:
        limit = (
            f"pool {sid.pool} allows {budget.max_out} of {budget.size} out "
            f"(max_drained {settings.max_drained:.0%})"
        )
    else:
        limit = (
            f"pool {sid.pool} keeps at least {settings.min_in_service} of {budget.size} in "
            f"rotation (min_in_service {settings.min_in_service})"
        )
    listed = _who_out(out, members, recorded or {}, owned or {}, now)
    raise CapRefused(
        f"refused: {sid} stays in: {limit}, and {_count(len(out))} out{listed}; "
        "use --force to go beyond"
    )


def _cap_broken(
    config: Config,
    sid: ServerId,
    members: Mapping[ServerId, Member],
    recorded: Mapping[ServerId, Override],
    now: float,
) -> tuple[Rule, governor.Budget, list[ServerId]] | None:
    """The cap taking ``sid`` out breaks, the pool's budget, and the other servers out."""
    settings = config.engine_settings().pools[sid.pool]
    leaving = {
        s for s, o in recorded.items() if o.kind is not OverrideKind.READY and not o.expired(now)
    }
    out = sorted(
        m.id for m in members.values() if m.id != sid and (not m.in_rotation or m.id in leaving)
    )
    budget = governor.budget(len(members), len(out), settings)
    rule = budget.check(settings)
    return None if rule is None else (rule, budget, out)


def _beyond_warning(config: Config, sid: ServerId, rule: Rule, budget: governor.Budget) -> str:
    """What a forced drain left: the pool beyond a cap, on the operator's word."""
    settings = config.engine_settings().pools[sid.pool]
    now_out = budget.out + 1
    if rule is Rule.MAX_DRAINED:
        cap = f"beyond max_drained {settings.max_drained:.0%} ({budget.max_out} allowed)"
    else:
        cap = f"below min_in_service {settings.min_in_service} in rotation"
    return f"{sid.pool} is now {now_out} out of {budget.size}, {cap}: on you (--force)"


_NAMED = 10  # servers named in a refusal; the rest are counted


def _count(n: int) -> str:
    return "none is" if n == 0 else ("1 is" if n == 1 else f"{n} are")


def _who_out(
    out: list[ServerId],
    members: Mapping[ServerId, Member],
    recorded: Mapping[ServerId, Override],
    owned: Mapping[ServerId, OwnedEntry],
    now: float,
) -> str:
    if not out:
        return ""
    named = [f"{s} ({_why_out(members[s], recorded.get(s), owned.get(s), now)})" for s in out]
    more = f", and {len(named) - _NAMED} more" if len(named) > _NAMED else ""
    return ": " + ", ".join(named[:_NAMED]) + more


def _why_out(m: Member, o: Override | None, mine: OwnedEntry | None, now: float) -> str:
    """Who took a server out, in a few words."""
    if o is not None and o.kind is not OverrideKind.READY and not o.expired(now):
        done = "drained" if o.kind is OverrideKind.DRAIN else "put in maint"
        return f"{done} by {o.who}: {o.reason}"
    if mine is not None and mine.admin is not AdminState.READY:
        done = "drained" if mine.admin is AdminState.DRAIN else "put in maint"
        return f"{done} by lbhealthd: {mine.reason}"
    if m.admin is not AdminState.READY and m.imposed is None:
        return f"{out_text(m)}, not set by lbhealthd"
    return out_text(m)


async def drain(
    config: Config,
    store: Store,
    writer: LbWriter,
    members: Mapping[ServerId, Member],
    sid: ServerId,
    *,
    reason: str,
    who: str,
    now: float,
    for_s: float | None = None,
    force: bool = False,
    maint: bool = False,
    apply: bool,
) -> Done:
    """Record a drain (or maint) override; with ``apply``, take the server out now."""
    for_s = seconds(for_s)
    member = find_member(config, sid, members)
    kind = OverrideKind.MAINT if maint else OverrideKind.DRAIN
    override = Override(sid, kind, reason, who, now, _until(now, for_s))
    warnings: tuple[str, ...] = ()
    with store.serialised():  # no other process records a drain between check and record
        recorded = store.load_overrides()
        if member.in_rotation and not force:
            try:
                check_caps(config, sid, members, recorded, now, writer.owned)
            except CapRefused as exc:
                log.warning("manual_drain_refused", server=str(sid), who=who, reason=str(exc))
                raise
        elif member.in_rotation:
            broken = _cap_broken(config, sid, members, recorded, now)
            if broken is not None:
                warnings = (_beyond_warning(config, sid, broken[0], broken[1]),)
        store.put_override(override)
    writer.record(
        sid,
        "override_set",
        kind=kind.value,
        who=who,
        reason=reason,
        until=override.expires_at,
        force=force,
    )
    log.info(
        "override_set",
        server=str(sid),
        kind=kind.value,
        who=who,
        reason=reason,
        until=override.expires_at,
        until_utc=iso_utc(override.expires_at),
        force=force,
    )
    error = None
    if apply:
        admin = AdminState.MAINT if maint else AdminState.DRAIN
        kind_done = ActionKind.MAINT if maint else ActionKind.DRAIN
        action = Action(sid, kind_done, override.as_reason())
        error = await _apply(writer, sid, Desired(admin, manual=True), member, action)
    return Done(override, lb_error=error, warnings=warnings)


async def restore(
    config: Config,
    store: Store,
    writer: LbWriter,
    members: Mapping[ServerId, Member],
    sid: ServerId,
    *,
    who: str,
    now: float,
    for_s: float | None = None,
    reason: str = "",
    apply: bool,
) -> Done:
    """End any override; keep a server lbhealthd held out in rotation for a while; set a
    server out by someone else's hand ready. With ``apply``, the LB is changed now, and a
    weight lbhealthd lowered (a slow-start step, kept through a drain) is set back to the
    server's full weight: no daemon runs to finish the ramp."""
    for_s = seconds(for_s)
    member = find_member(config, sid, members)
    notes = []
    removed = store.remove_override(sid)
    if removed is not None:
        notes.append(
            f"ended the keep-in hold set by {who_text(removed.who)}"
            if removed.kind is OverrideKind.READY
            else f"removed the {removed.kind.value} override by {who_text(removed.who)}"
        )
        writer.record(sid, "override_removed", who=who, kind=removed.kind.value)
    keep = None
    error = None
    said = "restored by an operator" + (f": {reason}" if reason else "")
    why = Reason(Rule.OVERRIDE, said, {"who": who})
    action = Action(sid, ActionKind.RESTORE, why)
    full = full_weight(config, member)
    mine = writer.owned.get(sid)
    # lbhealthd lowered the weight: a slow-start step it holds, or one kept through a drain
    # (a server it holds out below its full weight). A weight above it is no step of ours.
    lowered = (
        mine is not None
        and member.weight != full
        and (mine.weight is not None or member.weight < full)
    )
    if writer.holds_out(sid):
        hold = for_s if for_s else config.daemon.manual_change_hold
        keep = Override(sid, OverrideKind.READY, said, who, now, _until(now, hold))
        store.put_override(keep)
        notes.append("kept in rotation" + (f" for {hold:g}s" if hold else ""))
        if apply:
            want = Desired(AdminState.READY, manual=True, weight=full if lowered else None)
            error = await _apply(writer, sid, want, member, action)
    elif member.admin is not AdminState.READY:
        error = await _apply(writer, sid, Desired(AdminState.READY, manual=True), member, action)
        if error is None:
            notes.append(f"set ready (it was {member.admin.value}, not set by lbhealthd)")
    elif apply and lowered:  # in rotation, its ramp stopped where the daemon left it
        error = await _apply(
            writer, sid, Desired(AdminState.READY, manual=True, weight=full), member, action
        )
    if apply and member.weight != full:
        if lowered and error is None:
            notes.append(f"weight {member.weight} → {full}")
        elif lowered:
            notes.append(f"weight NOT set back: still {member.weight}, {full} expected")
        else:
            notes.append(
                f"weight {member.weight} left as it is ({full} expected): not set by lbhealthd"
            )
    writer.record(
        sid,
        "restore_requested",
        who=who,
        reason=reason or None,
        until=keep.expires_at if keep else None,
        kept_in=keep is not None,
    )
    log.info("server_restore_requested", server=str(sid), who=who, reason=reason, notes=notes)
    return Done(keep, tuple(notes), error)


def full_weight(config: Config, member: Member) -> int:
    """The weight a server has in rotation when lbhealthd lowers nothing: the pool's expected
    weight for it if the config gives one, else the weight the LB's own configuration gives."""
    pool = next((p for p in config.pools if p.name == member.id.pool), None)
    expected = pool.expected_weights.get(member.id.server) if pool is not None else None
    return expected if expected is not None else member.initial_weight


async def _apply(
    writer: LbWriter, sid: ServerId, want: Desired, member: Member, action: Action
) -> str | None:
    """Carry the change out now; the LB's refusal, if any."""
    await writer.converge(sid, want, member, action)
    await writer.flush()
    return writer.last_error.get(sid)


def _until(now: float, duration: float | None) -> float | None:
    return now + duration if duration is not None and duration > 0 else None
