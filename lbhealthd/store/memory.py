"""What state_dir remembers of one server, and the server set recorded for a pool, changed by
an operator while no daemon runs (a running daemon changes its own memory: it owns it).

A server's memory is spread over the files: its override (``overrides.json``), what lbhealthd
set of it (``owned.json``), and in ``engine.json`` the engine's memory (``engine``), a change
recorded but not confirmed (``pending``) and its place in the recorded set (``discovered``).
The recorded set is ``{"pools": {pool: [server, ...]}, "addresses": {pool: {server:
"host:port"}}}``; the addresses let the audit tell a renamed server from a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lbhealthd.model import ServerId
from lbhealthd.store.state_dir import Store

DISCOVERED = "discovered"


Sets = dict[str, list[str]]  # pool -> its recorded servers
Addresses = dict[str, dict[str, str]]  # pool -> server -> "host:port"


def recorded_sets(blob: Mapping[str, Any] | None) -> tuple[Sets, Addresses]:
    """The recorded server sets by pool, and the addresses recorded with them."""
    blob = blob or {}
    pools = {str(k): [str(s) for s in v] for k, v in dict(blob.get("pools", {})).items()}
    addresses = {
        str(k): {str(s): str(a) for s, a in dict(v).items()}
        for k, v in dict(blob.get("addresses", {})).items()
    }
    return pools, addresses


def discovered_blob(
    pools: Mapping[str, list[str]], addresses: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    return {
        "pools": {k: sorted(v) for k, v in sorted(pools.items())},
        "addresses": {k: dict(sorted(v.items())) for k, v in sorted(addresses.items()) if v},
    }


def forget(store: Store, sid: ServerId) -> list[str]:
    """Drop everything state_dir remembers of ``sid``, under the writers' lock; what was
    dropped, in words (empty when nothing was remembered)."""
    dropped: list[str] = []
    key = str(sid)
    with store.serialised():
        override = store.remove_override(sid)
        if override is not None:
            dropped.append(f"its {override.kind.value} override by {override.who}")
        owned = store.load_owned()
        if owned.pop(sid, None) is not None:
            store.save_owned(owned)
            dropped.append("what lbhealthd had set of it (owned.json)")
        blobs: dict[str, dict[str, Any]] = {}
        engine = dict(store.load_blob("engine") or {})
        servers = dict(engine.get("servers", {}))
        if servers.pop(key, None) is not None:
            blobs["engine"] = {**engine, "servers": servers}
            dropped.append("the engine's memory of it")
        pending = dict(store.load_blob("pending") or {})
        changes = dict(pending.get("servers", {}))
        if changes.pop(key, None) is not None:
            blobs["pending"] = {**pending, "servers": changes}
            dropped.append("a change recorded but never confirmed")
        pools, addresses = recorded_sets(store.load_blob(DISCOVERED))
        if sid.server in pools.get(sid.pool, []):
            pools[sid.pool] = [s for s in pools[sid.pool] if s != sid.server]
            addresses.get(sid.pool, {}).pop(sid.server, None)
            blobs[DISCOVERED] = discovered_blob(pools, addresses)
            dropped.append(f"its place in the recorded server set of {sid.pool}")
        if blobs:
            store.save_blobs(blobs)
    return dropped


def record_set(store: Store, pool: str, addresses: Mapping[str, str]) -> list[str] | None:
    """Record ``addresses``' servers as ``pool``'s expected set; the set recorded before."""
    with store.serialised():
        pools, known = recorded_sets(store.load_blob(DISCOVERED))
        before = pools.get(pool)
        pools[pool] = sorted(addresses)
        known[pool] = dict(addresses)
        store.save_blob(DISCOVERED, discovered_blob(pools, known))
    return before
