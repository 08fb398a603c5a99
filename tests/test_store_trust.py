"""What lbhealthd trusts in ``daemon.state_dir``: a directory only it (or root) can change, and
in it regular files of its own, opened without following a symlink and read within a bound.

Another user's doing is played by a forked child that switched to another uid; a read that
would block or never end runs in a child with a deadline and a memory limit.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbhealthd.errors import StateError
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from lbhealthd.store import OwnedEntry, Store
from tests.other_user import NOBODY, OTHER, in_child, needs_root, shared_dir

STATE_FILES = ["overrides.json", "owned.json", "engine.json", "actions.jsonl", "lock"]
S1 = ServerId("api", "s1")


def drain(server: ServerId = S1, reason: str = "disk full") -> Override:
    return Override(server, OverrideKind.DRAIN, reason, "alice", 1_700_000_000.0, None)


def use(state: Path) -> str:
    """What the daemon does first with a state_dir: open it (reading every file), then write."""
    store = Store.open(state)
    store.append_action(event="started")
    store.put_override(drain())
    return "used"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    Store(path)
    return path


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


# -- symlinks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_symlinked_state_file_is_refused_not_followed(
    state: Path, tmp_path: Path, name: str
) -> None:
    """A symlink planted as a state file is neither read, written nor locked through: the error
    names it, and the file it points to (root's only, say) is left as it was."""
    target = tmp_path / "root-only"
    target.write_bytes(b"secret\n")
    target.chmod(0o600)
    (state / name).unlink(missing_ok=True)
    (state / name).symlink_to(target)
    with pytest.raises(StateError) as info:
        use(state)
    message = str(info.value)
    assert str(state / name) in message and "symbolic link" in message
    assert target.read_bytes() == b"secret\n"
    assert (state / name).is_symlink()
    (state / name).unlink()
    assert use(state) == "used"


def test_a_hard_linked_state_file_is_refused(state: Path, tmp_path: Path) -> None:
    """A second name for a state file (a hard link to a file elsewhere) is refused: appending
    to it would change that other file."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.link(target, state / "actions.jsonl")
    with pytest.raises(StateError, match="hard links") as info:
        Store(state).append_action(event="x")
    assert str(state / "actions.jsonl") in str(info.value)
    assert target.read_bytes() == b""
    (state / "actions.jsonl").unlink()
    assert Store(state).append_action(event="x")["event"] == "x"


# -- FIFOs, devices and sizes ---------------------------------------------------------------


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_fifo_named_like_a_state_file_is_refused_at_once(state: Path, name: str) -> None:
    """A FIFO would block the event loop on open or read: it is refused at once, by name."""
    (state / name).unlink(missing_ok=True)
    os.mkfifo(state / name, 0o640)
    got = in_child(use, state)
    assert got.startswith("StateError: "), got
    assert str(state / name) in got and "a FIFO, not a regular file" in got
    (state / name).unlink()
    assert in_child(use, state) == "ok: used"


def test_a_dev_zero_symlink_is_refused_at_once(state: Path) -> None:
    """A symlink to /dev/zero would be read without end: it is refused, by name."""
    (state / "engine.json").symlink_to("/dev/zero")
    got = in_child(use, state)
    assert got.startswith("StateError: "), got
    assert str(state / "engine.json") in got and "symbolic link" in got


@needs_root
def test_a_device_named_like_a_state_file_is_refused(state: Path) -> None:
    """A character device (a copy of /dev/zero) in state_dir is not a file lbhealthd reads."""
    try:
        os.mknod(state / "owned.json", stat.S_IFCHR | 0o640, os.makedev(1, 5))
    except PermissionError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    got = in_child(use, state)
    assert got.startswith("StateError: "), got
    assert str(state / "owned.json") in got and "a character device, not a regular file" in got


def test_an_oversized_document_is_refused_naming_its_size(state: Path) -> None:
    """A document far larger than any lbhealthd writes is refused before it is read whole."""
    path = state / "overrides.json"
    big = b'{"version": 1, "overrides": []' + b" " * (17 * 1024 * 1024) + b"}"
    path.write_bytes(big)
    with pytest.raises(StateError) as info:
        Store.open(state)
    message = str(info.value)
    assert str(path) in message and f"{len(big)} bytes" in message and "move it aside" in message
    path.write_bytes(b'{"version": 1, "overrides": []}')
    assert Store.open(state).load_overrides() == {}


def test_a_document_too_large_to_read_back_is_not_written(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What lbhealthd writes it can read back: a document over the bound is refused before
    the write, and the previous file stays."""
    store = Store(state)
    store.put_override(drain())
    before = (state / "overrides.json").read_bytes()
    monkeypatch.setattr("lbhealthd.store.documents.MAX_DOCUMENT", 4096)
    with pytest.raises(StateError, match="more than the 4096 bytes") as info:
        store.put_override(drain(ServerId("api", "s2"), reason="x" * 5000))
    assert str(state / "overrides.json") in str(info.value)
    assert (state / "overrides.json").read_bytes() == before
    store.put_override(drain(ServerId("api", "s2"), reason="x" * 100))
    assert len(store.load_overrides()) == 2


@pytest.mark.parametrize("where", [0, 1, 2])
def test_an_endless_action_log_line_is_skipped_and_counted(state: Path, where: int) -> None:
    """A log line longer than any record lbhealthd writes (first, between two, last) is
    skipped and counted, not kept in memory whole; the records around it are read."""
    huge = json.dumps({"event": "huge", "pad": "x" * (2 * 1024 * 1024)}).encode() + b"\n"
    lines = [json.dumps({"event": e}).encode() + b"\n" for e in ("before", "after")]
    lines.insert(where, huge)
    (state / "actions.jsonl").write_bytes(b"".join(lines))
    records = Store(state).read_actions()
    assert [r["event"] for r in records] == ["before", "after"]
    assert records.skipped_lines == 1


# -- the directory: its mode and owner ------------------------------------------------------


@pytest.mark.parametrize(("mode", "who"), [(0o770, "its group"), (0o757, "every user")])
def test_a_state_dir_writable_by_others_is_refused(state: Path, mode: int, who: str) -> None:
    """A state_dir others may write is refused, naming it, its mode and the fix; tightened,
    it is used again."""
    state.chmod(mode)
    with pytest.raises(StateError) as info:
        Store.open(state)
    message = str(info.value)
    assert str(state) in message and f"writable by {who}" in message
    assert f"mode {mode:04o}" in message and f"chmod go-w {state}" in message
    state.chmod(0o750)
    assert use(state) == "used"


def _maint_everything(state: Path) -> str:
    """Another user replaces overrides.json, putting every server in maint."""
    entries = [
        {
            "server": f"api/s{i}",
            "kind": "maint",
            "reason": "x",
            "who": "x",
            "created_at": 1.0,
            "expires_at": None,
        }
        for i in range(1, 6)
    ]
    temp = state / ".planted"
    temp.write_text(json.dumps({"version": 1, "overrides": entries}))
    os.replace(temp, state / "overrides.json")
    return "planted"


@needs_root
def test_overrides_planted_by_another_user_are_refused(shared: Path) -> None:
    """Another user replaced overrides.json in a world-writable state_dir: lbhealthd refuses
    the directory, and once it is tightened, the file that user left; nothing else is lost."""
    state = shared / "state"
    store = Store(state)
    store.put_override(drain())
    state.chmod(0o777)
    assert in_child(_maint_everything, state, uid=NOBODY) == "ok: planted"
    with pytest.raises(StateError, match="writable by every user"):
        Store.open(state)
    state.chmod(0o750)
    with pytest.raises(StateError) as info:
        Store.open(state)
    message = str(info.value)
    assert str(state / "overrides.json") in message and f"owned by uid {NOBODY}" in message
    (state / "overrides.json").unlink()
    store.put_override(drain())
    assert Store.open(state).load_overrides() == {S1: drain()}


@needs_root
def test_a_state_dir_owned_by_another_user_is_refused(shared: Path) -> None:
    """A state_dir owned by a user other than lbhealthd's (or root) is refused: that user could
    replace its files. Owned by lbhealthd's user, it is used."""
    state = shared / "state"
    state.mkdir(mode=0o755)
    os.chown(state, OTHER, OTHER)
    got = in_child(use, state, uid=NOBODY)
    assert got.startswith("StateError: "), got
    assert str(state) in got and f"owned by uid {OTHER}" in got and f"uid {NOBODY}" in got
    os.chown(state, NOBODY, NOBODY)
    os.chmod(state, 0o750)
    assert in_child(use, state, uid=NOBODY) == "ok: used"


# -- root writing into the daemon user's state_dir ------------------------------------------


def _read_everything(state: Path) -> str:
    """What the daemon, as its own user, reads and writes at start."""
    store = Store.open(state)
    got = (store.load_overrides(), store.load_owned(), store.load_blob("engine"))
    store.append_action(event="daemon")
    store.save_owned(store.load_owned())
    store.put_override(drain(ServerId("api", "s2")))
    return f"{sorted(map(str, got[0]))} {sorted(map(str, got[1]))} {got[2]}"


@needs_root
def test_files_root_writes_belong_to_the_state_dirs_owner(shared: Path) -> None:
    """Root (the on-call CLI's direct path) writing into the daemon user's state_dir leaves
    every file it creates or replaces owned by that user, so the daemon starts."""
    state = shared / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    store = Store(state)
    store.put_override(drain())
    store.save_owned({S1: OwnedEntry(S1, AdminState.DRAIN, 1.0, "operator")})
    store.save_blob("engine", {"servers": {}})
    store.append_action(event="direct")
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in state.iterdir()}
    assert owners == {name: (NOBODY, NOBODY) for name in STATE_FILES}
    got = in_child(_read_everything, state, uid=NOBODY)
    assert got == "ok: ['api/s1'] ['api/s1'] {'servers': {}}"


@needs_root
def test_root_hands_back_the_files_an_older_root_run_left(shared: Path) -> None:
    """Root-owned files in the daemon user's state_dir (an older root run left them) stop the
    daemon with an error naming the file and its owner; the next root run hands them back."""
    state = shared / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    for name, content in (
        ("overrides.json", b'{"version": 1, "overrides": []}'),
        ("actions.jsonl", b""),
        ("lock", b""),
    ):
        (state / name).write_bytes(content)
        (state / name).chmod(0o600)
    got = in_child(_read_everything, state, uid=NOBODY)
    assert got.startswith("StateError: "), got
    assert "owned by uid 0" in got
    Store(state)
    assert {p.stat().st_uid for p in state.iterdir()} == {NOBODY}
    assert in_child(_read_everything, state, uid=NOBODY) == "ok: [] [] None"
