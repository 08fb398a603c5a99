"""The daemon-down path of `drain`, `restore` and `status`: the LB and state_dir, directly.

Drain and restore are the same functions the control socket runs (lbhealthd.overrides), with
``apply=True``: the change goes through the LB writer with write-ahead and ownership, so the
daemon finds it owned, and honours the override, when it starts. Status is the same document
a running daemon serves, built from a read of the LB and state_dir.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from lbhealthd import overrides, status
from lbhealthd.config import Config
from lbhealthd.drivers import STATE_BLOB, Driver, make_driver
from lbhealthd.errors import DriverError, LbhealthdError, UnknownServer
from lbhealthd.model import Member, OverrideKind, ServerId
from lbhealthd.report import PoolReport, RoundReport
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter
from lbhealthd.writer.journal import Journal

__all__ = ["DirectResult", "drain", "open_driver", "restore", "status_document", "who"]

DirectResult = tuple[overrides.Done | None, str | None]  # what was done, or why nothing was


_SUDO_USER = re.compile(r"[A-Za-z0-9._-]{1,32}")


def who() -> str:
    """The caller, as recorded with an override: the name of the process's real uid, never
    one from the environment (``LOGNAME`` and ``USER`` are whatever the caller set), and for
    root the ``SUDO_USER`` that sudo sets, named as sudo's word."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "") if uid == 0 else ""
    via = f", via sudo by {sudo}" if _SUDO_USER.fullmatch(sudo) else ""
    return f"{name} (uid {uid}{via}, cli)"


def open_driver(config: Config, store: Store | None = None) -> Driver:
    """The config's driver, keeping what it remembers in state_dir: in ``store``, or in one
    opened here (without it when state_dir cannot be opened: a read goes on regardless)."""
    if store is None:
        try:
            store = Store(config.daemon.state_dir)
        except LbhealthdError:
            store = None
    return make_driver(config, state=None if store is None else store.blob(STATE_BLOB))


@asynccontextmanager
async def _session(config: Config) -> AsyncIterator[tuple[Driver, Store, LbWriter]]:
    store = Store.open(config.daemon.state_dir)
    driver = open_driver(config, store)
    try:
        writer = LbWriter(driver, Journal(store), path="direct")
        yield driver, store, writer
        await writer.flush()
    finally:
        await driver.close()


async def _members(driver: Driver, config: Config, sid: ServerId) -> Mapping[ServerId, Member]:
    if sid.pool not in {p.name for p in config.pools}:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config")
    snap = await driver.snapshot(sid.pool)
    return {m.id: m for m in snap.members}


async def drain(
    config: Config, sid: ServerId, kind: OverrideKind, reason: str, for_s: float | None, force: bool
) -> DirectResult:
    """Record the override and take the server out now; (done, None) or (None, why not)."""
    async with _session(config) as (driver, store, writer):
        try:
            members = await _members(driver, config, sid)
        except DriverError as exc:
            return None, f"the LB could not be read: {exc}"
        done = await overrides.drain(
            config,
            store,
            writer,
            members,
            sid,
            reason=reason,
            who=who(),
            now=time.time(),
            for_s=for_s,
            force=force,
            maint=kind is OverrideKind.MAINT,
            apply=True,
        )
        return done, None


async def restore(
    config: Config, sid: ServerId, for_s: float | None, reason: str = ""
) -> DirectResult:
    """End the override and put the server in rotation now; (done, None) or (None, why not)."""
    async with _session(config) as (driver, store, writer):
        try:
            members = await _members(driver, config, sid)
        except DriverError as exc:
            return None, f"the LB could not be read: {exc}"
        done = await overrides.restore(
            config,
            store,
            writer,
            members,
            sid,
            who=who(),
            now=time.time(),
            for_s=for_s,
            reason=reason,
            apply=True,
        )
        return done, None


async def status_document(config: Config) -> dict[str, Any]:
    """The status document from the LB and state_dir (the daemon is not running)."""
    driver = open_driver(config)
    settings = config.engine_settings()
    pools = []
    try:
        for pool in config.pools:
            try:
                snap = await driver.snapshot(pool.name)
            except DriverError as exc:
                pools.append(PoolReport(pool.name, settings.pools[pool.name], {}, str(exc)))
                continue
            members = {m.id: m for m in snap.members}
            partial = frozenset(sid for sid in members if sid.server in snap.partial)
            pools.append(PoolReport(pool.name, settings.pools[pool.name], members, partial=partial))
    finally:
        await driver.close()
    try:
        store = Store(config.daemon.state_dir)
        owned, held = store.load_owned(), store.load_overrides()
    except LbhealthdError:
        owned, held = {}, {}
    report = RoundReport(tuple(pools), running=False, owned=owned, overrides=held)
    return status.document(report, time.time(), time.monotonic())
