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
- A restore removes any override. A server lbhealthd holds out gets a keep-in override for
  ``for_s`` (default ``daemon.manual_change_hold``) so it is not drained again at once; a server
  out by someone else's hand is set ready (the operator asked for exactly that).
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
from lbhealthd.store import Store
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
) -> None:
    """Raise CapRefused, naming the cap, if taking ``sid`` out breaks the pool's caps.

    Out counts the servers out of rotation in the LB and those with a drain or maint override
    in ``recorded`` not expired at wall time ``now``: recorded, they go out at the next round
    (or the next command), whatever the LB showed when ``members`` was read."""
    settings = config.engine_settings().pools[sid.pool]
    leaving = {
        s
        for s, o in (recorded or {}).items()
        if o.kind is not OverrideKind.READY and not o.expired(now)
    }
    others_out = sum(
        1 for m in members.values() if m.id != sid and (not m.in_rotation or m.id in leaving)
    )
    size = len(members)
    budget = governor.budget(size, others_out, settings)
    rule = budget.check(settings)
    if rule is None:
        return
    if rule is Rule.MAX_DRAINED:
        raise CapRefused(
            f"refused: taking {sid} out would put {others_out + 1} of {size} servers out of "
            f"rotation, above max_drained {settings.max_drained:.0%} ({budget.max_out} "
            f"server(s)); use --force to do it anyway"
        )
    raise CapRefused(
        f"refused: taking {sid} out would leave {size - others_out - 1} of {size} servers in "
        f"rotation, below min_in_service {settings.min_in_service}; use --force to do it anyway"
    )


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
    with store.serialised():  # no other process records a drain between check and record
        if member.in_rotation and not force:
            try:
                check_caps(config, sid, members, store.load_overrides(), now)
            except CapRefused as exc:
                log.warning("manual_drain_refused", server=str(sid), who=who, reason=str(exc))
                raise
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
    return Done(override, lb_error=error)


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
    apply: bool,
) -> Done:
    """End any override; keep a server lbhealthd held out in rotation for a while; set a
    server out by someone else's hand ready. With ``apply``, the LB is changed now."""
    for_s = seconds(for_s)
    member = find_member(config, sid, members)
    notes = []
    removed = store.remove_override(sid)
    if removed is not None:
        notes.append(f"removed the {removed.kind.value} override by {who_text(removed.who)}")
        writer.record(sid, "override_removed", who=who, kind=removed.kind.value)
    keep = None
    error = None
    reason = Reason(Rule.OVERRIDE, "restore by an operator", {"who": who})
    action = Action(sid, ActionKind.RESTORE, reason)
    if writer.holds_out(sid):
        hold = for_s if for_s else config.daemon.manual_change_hold
        keep = Override(
            sid, OverrideKind.READY, "restored by an operator", who, now, _until(now, hold)
        )
        store.put_override(keep)
        notes.append("kept in rotation" + (f" for {hold:g}s" if hold else ""))
        if apply:
            error = await _apply(
                writer, sid, Desired(AdminState.READY, manual=True), member, action
            )
    elif member.admin is not AdminState.READY:
        error = await _apply(writer, sid, Desired(AdminState.READY, manual=True), member, action)
        if error is None:
            notes.append(f"set ready (it was {member.admin.value}, not set by lbhealthd)")
    log.info("server_restore_requested", server=str(sid), who=who, notes=notes)
    return Done(keep, tuple(notes), error)


async def _apply(
    writer: LbWriter, sid: ServerId, want: Desired, member: Member, action: Action
) -> str | None:
    """Carry the change out now; the LB's refusal, if any."""
    await writer.converge(sid, want, member, action)
    await writer.flush()
    return writer.last_error.get(sid)


def _until(now: float, duration: float | None) -> float | None:
    return now + duration if duration is not None and duration > 0 else None
