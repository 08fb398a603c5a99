"""Tests of lbhealthd.store: persisted overrides, ownership, engine memory and the action log."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lbhealthd.errors import StateError
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from lbhealthd.store import ActionRecords, OwnedEntry, Store


def sid(text: str) -> ServerId:
    return ServerId.parse(text)


def override(
    server: str = "api/s1",
    kind: OverrideKind = OverrideKind.DRAIN,
    expires_at: float | None = None,
) -> Override:
    return Override(
        server=sid(server),
        kind=kind,
        reason="disk full",
        who="alice",
        created_at=1_700_000_000.5,
        expires_at=expires_at,
    )


def owned(server: str = "api/s1", weight: int | None = None) -> OwnedEntry:
    return OwnedEntry(sid(server), AdminState.DRAIN, 1_700_000_001.25, "fall", weight)


def override_json(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "server": "api/s1",
        "kind": "drain",
        "reason": "disk full",
        "who": "alice",
        "created_at": 1.0,
        "expires_at": None,
    }
    entry.update(changes)
    return entry


def doc(key: str, value: object, version: object = 1) -> bytes:
    return json.dumps({"version": version, key: value}).encode()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> Store:
    return Store(state, clock=Clock())


# -- round trips ----------------------------------------------------------------------------


def test_missing_files_read_as_empty(store: Store) -> None:
    """A fresh state_dir holds no overrides, no ownership, no blobs and no actions."""
    assert store.load_overrides() == {}
    assert store.load_owned() == {}
    assert store.load_blob("flaps") is None
    assert store.read_actions() == []


def test_overrides_round_trip_and_survive_a_new_store(store: Store, state: Path) -> None:
    """Overrides put by one Store are read back identically by it and by a new Store."""
    items = [
        override("api/s1"),
        override("api/s2", OverrideKind.MAINT, expires_at=1_700_000_600.75),
        override("web.v2/node-3:a", OverrideKind.READY, expires_at=1_700_000_000),
    ]
    for o in items:
        store.put_override(o)
    expected = {o.server: o for o in items}
    assert store.load_overrides() == expected
    assert Store.open(state).load_overrides() == expected


def test_put_override_replaces_the_same_server(store: Store) -> None:
    """A second override for a server replaces the first instead of adding to it."""
    store.put_override(override("api/s1", OverrideKind.DRAIN))
    store.put_override(override("api/s1", OverrideKind.READY))
    assert [o.kind for o in store.load_overrides().values()] == [OverrideKind.READY]


def test_remove_override(store: Store) -> None:
    """remove_override returns the removed override once, then None, leaving the others."""
    store.put_override(override("api/s1"))
    store.put_override(override("api/s2"))
    assert store.remove_override(sid("api/s1")) == override("api/s1")
    assert store.remove_override(sid("api/s1")) is None
    assert list(store.load_overrides()) == [sid("api/s2")]


def test_prune_expired_removes_and_returns_only_expired(store: Store) -> None:
    """prune_expired drops overrides whose expiry is at or before the wall time, by server."""
    store.put_override(override("api/s3", expires_at=100.0))
    store.put_override(override("api/s1", expires_at=99.0))
    store.put_override(override("api/s2", expires_at=101.0))
    store.put_override(override("api/s4", expires_at=None))
    pruned = store.prune_expired(100.0)
    assert [str(o.server) for o in pruned] == ["api/s1", "api/s3"]
    assert sorted(map(str, store.load_overrides())) == ["api/s2", "api/s4"]
    assert store.prune_expired(100.0) == []


def test_owned_round_trip_replaces_the_whole_record(store: Store, state: Path) -> None:
    """save_owned writes exactly the given entries; earlier ones not given are gone."""
    store.save_owned({e.server: e for e in [owned("api/s1"), owned("api/s2", weight=10)]})
    only = {sid("api/s3"): owned("api/s3", weight=0)}
    store.save_owned(only)
    assert Store(state).load_owned() == only


def test_save_owned_refuses_an_entry_under_another_key(store: Store) -> None:
    """An entry filed under a server other than its own is a caller's mistake."""
    with pytest.raises(ValueError, match="api/s2"):
        store.save_owned({sid("api/s1"): owned("api/s2")})


def test_blobs_round_trip_independently(store: Store, state: Path) -> None:
    """Each named blob is stored and replaced on its own; others are untouched."""
    store.save_blob("flaps", {"api/s1": [1.0, 2.5], "n": 2})
    store.save_blob("slow_start", {"api/s2": 0.5})
    store.save_blob("flaps", {"api/s1": []})
    again = Store(state)
    assert again.load_blob("flaps") == {"api/s1": []}
    assert again.load_blob("slow_start") == {"api/s2": 0.5}
    assert again.load_blob("other") is None


@pytest.mark.parametrize("name", ["", "Flaps", "a-b", "../x", "a1"], ids=repr)
def test_blob_names_are_restricted(store: Store, name: str) -> None:
    """Blob names outside [a-z_]+ are refused on save and on load."""
    with pytest.raises(ValueError, match="blob name"):
        store.save_blob(name, {})
    with pytest.raises(ValueError, match="blob name"):
        store.load_blob(name)


# -- concurrency ----------------------------------------------------------------------------


def _put_many(state_dir: str, prefix: str, count: int, start: Any) -> None:
    """Child process: wait for the other writer, then put ``count`` overrides."""
    target = Store(state_dir)
    start.wait(timeout=60)
    for i in range(count):
        target.put_override(override(f"api/{prefix}{i}"))


def test_concurrent_writers_in_two_processes_lose_no_update(state: Path) -> None:
    """Two processes putting 50 overrides each at once leave all 100 in the file."""
    Store(state)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_put_many, args=(str(state), prefix, 50, start)) for prefix in "ab"
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    loaded = Store(state).load_overrides()
    assert len(loaded) == 100
    assert {str(s) for s in loaded} == {f"api/{p}{i}" for p in "ab" for i in range(50)}


# -- action log -----------------------------------------------------------------------------


def test_action_log_keeps_order_and_limit_returns_the_last(state: Path) -> None:
    """Appended actions read back in order with ts and UTC time; limit=2 gives the last two."""
    clock = Clock(1_700_000_000.25)
    log = Store(state, clock=clock)
    for i in range(3):
        log.append_action(event="server_drained", server=sid(f"api/s{i}"), n=i)
        clock.now += 1
    records = log.read_actions()
    assert records == [
        {
            "ts": 1_700_000_000.25 + i,
            "time": f"2023-11-14T22:13:2{i}.250Z",
            "event": "server_drained",
            "server": f"api/s{i}",
            "n": i,
        }
        for i in range(3)
    ]
    assert [r["n"] for r in log.read_actions(limit=2)] == [1, 2]
    assert log.read_actions(limit=0) == []
    assert records.skipped_lines == 0


def test_action_log_refuses_reserved_fields(store: Store) -> None:
    """ts and time belong to the log itself and cannot be passed in."""
    with pytest.raises(ValueError, match="ts"):
        store.append_action(ts=1.0)


def test_torn_last_line_is_skipped_counted_and_appended_after(store: Store, state: Path) -> None:
    """A torn line from a crash is skipped and counted, and the next record starts afresh."""
    store.append_action(event="a")
    with (state / "actions.jsonl").open("ab") as f:
        f.write(b'{"ts": 1.0, "event": "tor')
    torn = store.read_actions()
    assert [r["event"] for r in torn] == ["a"]
    assert isinstance(torn, ActionRecords)
    assert torn.skipped_lines == 1
    store.append_action(event="b")
    after = store.read_actions()
    assert [r["event"] for r in after] == ["a", "b"]
    assert after.skipped_lines == 1
    assert store.read_actions(limit=1) == [after[-1]]


def test_read_actions_across_read_blocks(store: Store) -> None:
    """Records spanning the backward reader's block boundaries are all read whole, in order."""
    padding = "x" * 150
    for i in range(1000):
        store.append_action(i=i, pad=padding)
    assert [r["i"] for r in store.read_actions()] == list(range(1000))
    assert [r["i"] for r in store.read_actions(limit=700)] == list(range(300, 1000))


# -- corruption -----------------------------------------------------------------------------

OVERRIDE_CORRUPTIONS = [
    pytest.param(b"\x00\xff\xfegarbage", "not valid JSON", id="garbage-bytes"),
    pytest.param(doc("overrides", [override_json()])[:-7], "not valid JSON", id="truncated"),
    pytest.param(b"", "not valid JSON", id="empty-file"),
    pytest.param(b"[]", "not an object", id="not-an-object"),
    pytest.param(doc("overrides", [], version=2), "format version 2", id="future-version"),
    pytest.param(doc("overrides", [], version="1"), "integer 'version'", id="version-string"),
    pytest.param(b'{"overrides": []}', "integer 'version'", id="no-version"),
    pytest.param(doc("overrides", {}), "not a list", id="overrides-not-list"),
    pytest.param(doc("servers", []), "unknown keys", id="unknown-top-key"),
    pytest.param(doc("overrides", ["api/s1"]), "entry 0", id="entry-not-object"),
    pytest.param(
        doc("overrides", [override_json(server="api/s1;disable server api/s2")]),
        "invalid server name",
        id="semicolon-in-name",
    ),
    pytest.param(
        doc("overrides", [override_json(server="api")]), "POOL/SERVER", id="no-slash-in-name"
    ),
    pytest.param(
        doc("overrides", [override_json(created_at="yesterday")]),
        "'created_at'",
        id="time-is-string",
    ),
    pytest.param(
        doc("overrides", [override_json(expires_at=True)]), "'expires_at'", id="expiry-is-bool"
    ),
    pytest.param(
        b'{"version": 1, "overrides": [{"server": "api/s1", "kind": "drain", '
        b'"reason": "", "who": "", "created_at": NaN}]}',
        "NaN",
        id="nan-time",
    ),
    pytest.param(doc("overrides", [override_json(kind="off")]), "'kind'", id="unknown-kind"),
    pytest.param(doc("overrides", [override_json(reason=5)]), "'reason'", id="reason-number"),
    pytest.param(
        doc("overrides", [{k: v for k, v in override_json().items() if k != "who"}]),
        "missing",
        id="missing-key",
    ),
    pytest.param(
        doc("overrides", [override_json(expire_at=5.0)]), "unknown keys", id="misspelt-key"
    ),
    pytest.param(
        doc("overrides", [override_json(), override_json(kind="ready")]),
        "second override",
        id="duplicate-server",
    ),
]


@pytest.mark.parametrize(("content", "problem"), OVERRIDE_CORRUPTIONS)
def test_corrupt_overrides_raise_state_error_naming_the_file(
    store: Store, state: Path, content: bytes, problem: str
) -> None:
    """A damaged overrides.json is refused by reads, start-up and writers, and left as it was."""
    path = state / "overrides.json"
    path.write_bytes(content)
    for attempt in (
        store.load_overrides,
        lambda: Store.open(state),
        lambda: store.put_override(override("api/s9")),
        lambda: store.prune_expired(0.0),
    ):
        with pytest.raises(StateError) as info:
            attempt()
        message = str(info.value)
        assert str(path) in message
        assert problem in message
        assert "move it aside" in message
    assert path.read_bytes() == content


OTHER_CORRUPTIONS = [
    pytest.param("owned.json", b"{", "not valid JSON", id="owned-truncated"),
    pytest.param(
        "owned.json",
        doc("owned", [{"server": "a/b", "admin": "up", "since": 1.0, "reason": ""}]),
        "'admin'",
        id="owned-unknown-admin",
    ),
    pytest.param(
        "owned.json",
        doc("owned", [{"server": "a/b", "admin": "drain", "since": 1, "reason": "", "weight": -1}]),
        "'weight'",
        id="owned-negative-weight",
    ),
    pytest.param(
        "owned.json",
        doc("owned", [{"server": "a/b c", "admin": "drain", "since": 1, "reason": ""}]),
        "invalid server name",
        id="owned-space-in-name",
    ),
    pytest.param("engine.json", doc("blobs", [], version=0), "format version 0", id="engine-v0"),
    pytest.param("engine.json", doc("blobs", {"Flaps": {}}), "blob name", id="engine-bad-name"),
    pytest.param("engine.json", doc("blobs", {"flaps": [1]}), "not an object", id="engine-list"),
]


@pytest.mark.parametrize(("filename", "content", "problem"), OTHER_CORRUPTIONS)
def test_corrupt_owned_and_engine_files_stop_start_up(
    state: Path, filename: str, content: bytes, problem: str
) -> None:
    """A damaged owned.json or engine.json makes Store.open raise StateError naming it."""
    state.mkdir()
    (state / filename).write_bytes(content)
    with pytest.raises(StateError, match=problem) as info:
        Store.open(state)
    assert str(state / filename) in str(info.value)


def test_unreadable_file_raises_state_error(store: Store, state: Path) -> None:
    """A state file that cannot be read at all (a directory) raises StateError saying so."""
    (state / "overrides.json").mkdir()
    with pytest.raises(StateError, match="a directory, not a regular file"):
        store.load_overrides()


# -- write failures and crashes -------------------------------------------------------------


def _raiser(err: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(err, os.strerror(err))

    return fail


@pytest.mark.parametrize("call", ["write", "fsync", "replace"])
def test_full_disk_raises_state_error_and_keeps_the_old_file(
    store: Store, state: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """ENOSPC anywhere in a write raises StateError and leaves the old file and no temp file."""
    store.put_override(override("api/s1"))
    before = (state / "overrides.json").read_bytes()
    monkeypatch.setattr(os, call, _raiser(errno.ENOSPC))
    with pytest.raises(StateError, match="No space left on device") as info:
        store.put_override(override("api/s2"))
    monkeypatch.undo()
    assert str(state / "overrides.json") in str(info.value)
    assert (state / "overrides.json").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["lock", "overrides.json"]


def test_full_disk_on_append_raises_state_error(
    store: Store, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while appending an action raises StateError and keeps earlier records."""
    store.append_action(event="a")
    monkeypatch.setattr(os, "write", _raiser(errno.ENOSPC))
    with pytest.raises(StateError, match="No space left on device"):
        store.append_action(event="b")
    monkeypatch.undo()
    assert [r["event"] for r in store.read_actions()] == ["a"]


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, not even cleanup for OSError."""


def test_crash_before_replace_keeps_old_content_and_temp_is_cleaned(
    store: Store, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the temp write and the replace leaves the old file; a new Store cleans up."""
    store.save_owned({sid("api/s1"): owned("api/s1")})
    before = (state / "owned.json").read_bytes()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        store.save_owned({})
    monkeypatch.undo()
    leftovers = [p for p in state.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    assert (state / "owned.json").read_bytes() == before
    assert Store(state).load_owned() == {sid("api/s1"): owned("api/s1")}
    assert not leftovers[0].exists()


# -- modes ----------------------------------------------------------------------------------


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("strict_umask")
def test_files_are_0640_and_the_directory_0750(tmp_path: Path) -> None:
    """Whatever the umask, the created state_dir is 0o750 and every file in it 0o640."""
    state = tmp_path / "deep" / "state"
    s = Store(state)
    s.put_override(override())
    s.save_owned({})
    s.save_blob("flaps", {})
    s.append_action(event="x")
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    assert modes == {
        name: 0o640
        for name in ["lock", "overrides.json", "owned.json", "engine.json", "actions.jsonl"]
    }


def test_every_whole_file_carries_the_format_version(store: Store, state: Path) -> None:
    """overrides.json, owned.json and engine.json all start from {"version": 1, ...}."""
    store.put_override(override())
    store.save_owned({})
    store.save_blob("flaps", {})
    for name in ["overrides.json", "owned.json", "engine.json"]:
        assert json.loads((state / name).read_text())["version"] == 1
