"""`lbhealthd forget POOL/SERVER` and `lbhealthd audit --accept POOL`: what lbhealthd
remembers of a server gone from the LB, and the server set the audit expects of a pool.

Through the running daemon's control socket when it answers (it owns that memory, and makes
the change at the start of its next round); else directly on state_dir, under its writers'
lock (lbhealthd.store.memory). Either way a server the LB still lists is refused unless
forced, and the action log records who asked and why.
"""

from __future__ import annotations

from typing import Any

import structlog

from lbhealthd.config import Config
from lbhealthd.errors import DriverError
from lbhealthd.model import ServerId
from lbhealthd.oncall.client import call_daemon
from lbhealthd.oncall.commands import Outcome
from lbhealthd.oncall.direct import open_driver, who
from lbhealthd.server_set import address_of
from lbhealthd.store import Store
from lbhealthd.store.memory import forget as forget_in_store
from lbhealthd.store.memory import record_set

__all__ = ["accept", "forget"]

log = structlog.get_logger("lbhealthd.oncall.memory")


def _pool_error(config: Config, pool: str) -> Outcome | None:
    names = [p.name for p in config.pools]
    if pool not in names:
        return Outcome(2, (f"pool {pool!r} is not in the config (pools: {', '.join(names)})",))
    return None


def _answer(code: int, doc: dict[str, Any]) -> Outcome | None:
    """The daemon's refusal as an outcome (None when it did it)."""
    if code == 200:
        return None
    return Outcome(2 if code in (400, 403, 404) else 1, (str(doc.get("error", doc)),), doc)


async def _listed(config: Config, pool: str) -> dict[str, str]:
    """The servers the LB lists in ``pool`` now, with their addresses."""
    driver = open_driver(config)
    try:
        snap = await driver.snapshot(pool)
    finally:
        await driver.close()
    return {m.id.server: address_of(m) for m in snap.members}


async def forget(config: Config, sid: ServerId, reason: str, force: bool) -> Outcome:
    problem = _pool_error(config, sid.pool)
    if problem is not None:
        return problem
    body = {"server": str(sid), "reason": reason, "force": force}
    answer = await call_daemon(config, "POST", "/forget", body)
    if answer is not None:
        code, doc = answer
        refused = _answer(code, doc)
        if refused is not None:
            return refused
        return Outcome(
            0, (_forgotten(sid, doc.get("dropped") or []) + " (via the running daemon)",), doc
        )
    try:
        listed = sid.server in await _listed(config, sid.pool)
    except DriverError as exc:
        if not force:
            return Outcome(
                1,
                (
                    f"refused: cannot tell whether the load balancer still lists {sid} "
                    f"({exc}); use --force to forget it anyway",
                ),
            )
        listed = False
    if listed and not force:
        return Outcome(
            1,
            (
                f"refused: the load balancer still lists {sid}; lbhealthd forgets only a server "
                "gone from the LB (use --force to forget it anyway: it then starts afresh)",
            ),
        )
    store = Store.open(config.daemon.state_dir)
    dropped = forget_in_store(store, sid)
    caller = who()
    store.append_action(
        server=str(sid),
        action="server_forgotten",
        who=caller,
        reason=reason,
        forced=force,
        dropped=dropped,
        path="direct",
        dry_run=False,
    )
    log.info("server_forgotten", server=str(sid), who=caller, reason=reason, dropped=dropped)
    doc = {"result": "forgotten", "server": str(sid), "path": "direct", "dropped": dropped}
    return Outcome(
        0,
        (
            _forgotten(sid, dropped),
            f"daemon not running: updated {config.daemon.state_dir} directly",
        ),
        doc,
    )


def _forgotten(sid: ServerId, dropped: list[str]) -> str:
    if not dropped:
        return f"forget: lbhealthd remembered nothing of {sid}"
    return f"forget: {sid}: dropped " + "; ".join(dropped)


async def accept(config: Config, pool: str, reason: str) -> Outcome:
    problem = _pool_error(config, pool)
    if problem is not None:
        return problem
    if config.pool(pool).servers is not None:
        return Outcome(
            2,
            (
                f"pool {pool} lists its servers in the config (pools[].servers): the audit "
                "expects that list; change it there and reload",
            ),
        )
    answer = await call_daemon(config, "POST", "/accept", {"pool": pool, "reason": reason})
    if answer is not None:
        code, doc = answer
        refused = _answer(code, doc)
        if refused is not None:
            return refused
        line = _accepted(pool, doc.get("servers") or [], doc.get("before"))
        return Outcome(0, (line + " (via the running daemon)",), doc)
    listed = await _listed(config, pool)
    if not listed:
        return Outcome(1, (f"the load balancer lists no server in {pool}: nothing recorded",))
    store = Store.open(config.daemon.state_dir)
    before = record_set(store, pool, listed)
    caller = who()
    servers = sorted(listed)
    store.append_action(
        action="servers_accepted",
        pool=pool,
        servers=servers,
        before=before,
        who=caller,
        reason=reason,
        path="direct",
        dry_run=False,
    )
    log.info("servers_accepted", pool=pool, servers=servers, before=before, who=caller)
    doc = {"result": "accepted", "pool": pool, "path": "direct", "servers": servers}
    return Outcome(
        0,
        (
            _accepted(pool, servers, before),
            f"daemon not running: updated {config.daemon.state_dir} directly",
        ),
        doc | {"before": before},
    )


def _accepted(pool: str, servers: list[str], before: object) -> str:
    was = ", ".join(before) if isinstance(before, list) else "nothing recorded"
    return f"accept: {pool} expects {', '.join(servers) or 'no server'} from now on (was: {was})"
