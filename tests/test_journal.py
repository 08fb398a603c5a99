"""The journal: staged writes to state_dir, made durable together and off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from lbhealthd.errors import StateError
from lbhealthd.model import AdminState, ServerId
from lbhealthd.store import OwnedEntry, Store
from lbhealthd.writer.journal import Journal


def owned(name: str, admin: AdminState = AdminState.DRAIN) -> OwnedEntry:
    return OwnedEntry(ServerId.parse(name), admin, 1000.0, "test")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "state", clock=lambda: 1000.0)


async def test_nothing_is_written_until_sync(store: Store) -> None:
    """Staged changes stay in memory; after ``sync()`` a fresh reader sees all of them."""
    journal = Journal(store, clock=lambda: 1234.5)
    entry = owned("api/s1")
    journal.stage_owned({entry.server: entry})
    journal.stage_blob("pending", lambda: {"servers": {"api/s1": {"to": "drain"}}})
    journal.stage_record(server="api/s1", action="set_state", value="drain")
    fresh = Store.open(store.dir)
    assert fresh.load_owned() == {} and fresh.load_blob("pending") is None
    assert fresh.read_actions() == []
    await journal.sync()
    assert fresh.load_owned() == {entry.server: entry}
    assert fresh.load_blob("pending") == {"servers": {"api/s1": {"to": "drain"}}}
    [record] = fresh.read_actions()
    assert (record["ts"], record["action"], record["value"]) == (1234.5, "set_state", "drain")
    assert not journal.dirty


async def test_many_changes_are_one_write_each(store: Store) -> None:
    """500 staged records, ownership changes and blob changes cost one append and one write
    of each file, and each blob is built once, when the write starts."""
    journal = Journal(store)
    entries: dict[ServerId, OwnedEntry] = {}
    built = 0

    def pending() -> dict[str, object]:
        nonlocal built
        built += 1
        return {"servers": {str(s): {"to": "drain"} for s in entries}}

    for i in range(500):
        e = owned(f"api/s{i}")
        entries[e.server] = e
        journal.stage_owned(entries)
        journal.stage_blob("pending", pending)
        journal.stage_record(server=str(e.server), action="set_state", n=i)
    await journal.sync()
    assert journal.writes == 1 and built == 1
    assert len(store.load_owned()) == 500
    assert len((store.load_blob("pending") or {})["servers"]) == 500
    assert [r["n"] for r in store.read_actions()] == list(range(500))


async def test_concurrent_syncs_share_the_writes(store: Store) -> None:
    """Callers syncing together do not each write: 50 callers, at most two writes, and every
    caller returns only once its own change is on disk."""
    journal = Journal(store)
    seen: list[bool] = []

    async def change(i: int) -> None:
        journal.stage_record(server=f"api/s{i}", action="x", n=i)
        await journal.sync()
        seen.append(i in {r["n"] for r in Store.open(store.dir).read_actions()})

    await asyncio.gather(*(change(i) for i in range(50)))
    assert journal.writes <= 2
    assert seen == [True] * 50


async def test_writes_happen_off_the_event_loop(store: Store) -> None:
    """The write runs in a worker thread, so the loop keeps running while it lasts."""
    journal = Journal(store)
    threads: list[int] = []
    real = store.append_actions

    def spy(batch):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return real(batch)

    store.append_actions = spy  # type: ignore[method-assign]
    journal.stage_record(server="api/s1", action="x")
    await journal.sync()
    assert threads and threads[0] != threading.get_ident()


async def test_a_failed_write_is_logged_and_tried_again(store: Store) -> None:
    """A full disk: the sync logs state_write_failed and does not raise; the document is
    written at the next sync, and a newer version staged meanwhile wins over the failed one."""
    journal = Journal(store)
    real = store.save_owned
    calls = 0

    def full_once(entries):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StateError(f"{store.dir}: No space left on device")
        return real(entries)

    store.save_owned = full_once  # type: ignore[method-assign]
    first = owned("api/s1")
    journal.stage_owned({first.server: first})
    with capture_logs() as logs:
        await journal.sync()
    assert [e["file"] for e in logs if e["event"] == "state_write_failed"] == ["owned"]
    assert store.load_owned() == {} and journal.dirty
    await journal.sync()
    assert store.load_owned() == {first.server: first}

    calls = 0
    second = owned("api/s2")
    journal.stage_owned({second.server: second})
    with capture_logs():
        await journal.sync()  # fails
    third = owned("api/s3")
    journal.stage_owned({third.server: third})
    await journal.sync()
    assert store.load_owned() == {third.server: third}


async def test_failed_records_are_not_kept(store: Store) -> None:
    """Action records that could not be appended are dropped (logged with their count), so a
    long-full disk cannot grow the daemon's memory."""
    journal = Journal(store)

    def full(batch):  # type: ignore[no-untyped-def]
        raise StateError("No space left on device")

    store.append_actions = full  # type: ignore[method-assign]
    for i in range(3):
        journal.stage_record(server="api/s1", action="x", n=i)
    with capture_logs() as logs:
        await journal.sync()
    [failed] = [e for e in logs if e["event"] == "state_write_failed"]
    assert (failed["file"], failed["records"]) == ("actions", 3)
    assert not journal.dirty
