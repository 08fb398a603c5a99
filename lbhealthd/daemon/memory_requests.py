"""An operator's changes to what a running daemon remembers: `lbhealthd forget POOL/SERVER`
and `lbhealthd audit --accept POOL`, through the control socket.

The daemon owns its memory (the override book, the LB writer's ownership and pending
changes, the engine's state, the recorded server sets), and a round works on it across its
awaits: a change is queued (:func:`submit`) and made at the start of the next round,
when no round is half-way. The control request starts that round and waits for it.

- forget: everything remembered of one server, refused (:class:`StillListed`) while the last
  read of the LB lists it, unless forced (the server then starts afresh at the next read).
- accept: the servers of a pool's last read become its recorded set, which the audit expects
  from then on; refused for a pool whose ``servers`` the config lists.

Each is logged (``server_forgotten``, ``servers_accepted``) and recorded in the action log with
who asked and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from lbhealthd.engine import EngineState
from lbhealthd.errors import StillListed, Unavailable, UnknownServer
from lbhealthd.model import ServerId

if TYPE_CHECKING:
    from lbhealthd.daemon.reconciler import Reconciler

log = structlog.get_logger("lbhealthd.daemon.memory")


def submit(r: Reconciler, change: Callable[[], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
    """Queue ``change`` for the start of the next round; its answer, or its error, comes in
    the future returned."""
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def run() -> None:
        if future.cancelled():
            return
        try:
            future.set_result(change())
        except Exception as exc:  # the caller's answer carries it, whatever it is
            future.set_exception(exc)

    r.requests.append(run)
    return future


def forget(r: Reconciler, sid: ServerId, who: str, reason: str, force: bool) -> dict[str, Any]:
    """Drop everything the daemon remembers of ``sid``; what was dropped."""
    names = [p.name for p in r.config.pools]
    if sid.pool not in names:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config (pools: {', '.join(names)})")
    listed = sid in r.reader.members.get(sid.pool, {})
    if listed and not force:
        raise StillListed(
            f"refused: the load balancer still lists {sid}; lbhealthd forgets only a server "
            "gone from the LB (use --force to forget it anyway: it then starts afresh)"
        )
    dropped = []
    override = r.store.remove_override(sid)
    if override is not None:
        dropped.append(f"its {override.kind.value} override by {override.who}")
        r.book.current = {k: v for k, v in r.book.current.items() if k != sid}
    if sid in r.writer.owned:
        r.writer.release(sid)
        dropped.append("what lbhealthd had set of it (owned.json)")
    if r.writer.has_pending(sid):
        dropped.append("a change recorded but never confirmed")
    r.writer.drop_pending(sid)
    state = r.state
    if sid in state.servers or sid in state.absent:
        r.state = EngineState(
            {k: v for k, v in state.servers.items() if k != sid},
            {k: v for k, v in state.absent.items() if k != sid},
        )
        dropped.append("the engine's memory of it")
    if r.reader.forget(sid):
        dropped.append(f"its place in the recorded server set of {sid.pool}")
    r.watch.audit_due = True
    r.writer.record(sid, "server_forgotten", who=who, reason=reason, forced=force, dropped=dropped)
    log.info("server_forgotten", server=str(sid), who=who, reason=reason, dropped=dropped)
    return {"result": "forgotten", "server": str(sid), "path": "daemon", "dropped": dropped}


def accept(r: Reconciler, pool: str, who: str, reason: str) -> dict[str, Any]:
    """Record the servers of ``pool``'s last read as its expected set."""
    config = next((p for p in r.config.pools if p.name == pool), None)
    if config is None:
        names = ", ".join(p.name for p in r.config.pools)
        raise UnknownServer(f"pool {pool!r} is not in the config (pools: {names})")
    if config.servers is not None:
        raise UnknownServer(
            f"pool {pool} lists its servers in the config (pools[].servers): the audit expects "
            "that list; change it there and reload"
        )
    if pool not in r.reader.members or pool in r.reader.unavailable:
        raise Unavailable(f"pool {pool} could not be read from the LB: nothing recorded")
    before = r.reader.accept(pool)
    servers = r.reader.discovered[pool]
    r.watch.audit_due = True
    r.journal.stage_record(
        action="servers_accepted",
        pool=pool,
        servers=servers,
        before=before,
        who=who,
        reason=reason,
        path="daemon",
    )
    log.info("servers_accepted", pool=pool, servers=servers, before=before, who=who, reason=reason)
    return {
        "result": "accepted",
        "pool": pool,
        "path": "daemon",
        "servers": servers,
        "before": before,
    }
