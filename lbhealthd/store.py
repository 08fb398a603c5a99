"""What lbhealthd keeps in ``daemon.state_dir``, so that it survives restarts and SIGKILL.

Files (each whole-file document is ``{"version": 1, "<key>": ...}``):

    overrides.json   operators' manual overrides         {"version": 1, "overrides": [...]}
    owned.json       LB changes the daemon made itself   {"version": 1, "owned": [...]}
    engine.json      small named engine state blobs      {"version": 1, "blobs": {name: {...}}}
    actions.jsonl    append-only log, one JSON object per line, each with ``ts`` and ``time``
    lock             empty; ``fcntl.flock`` target that serialises every writer

Servers are written as ``POOL/SERVER``, enums by value, times as wall-clock seconds.

Writing. Every whole-file write goes to a temp file in the same directory, is flushed and
fsynced, then ``os.replace``-d over the old file, and the directory is fsynced; a crash at any
point leaves either the old or the new file, never a mix. Writers (the daemon and the on-call
CLI, in separate processes) hold an exclusive flock on ``lock`` for the whole
read-modify-write, so neither loses the other's update. Readers need no lock. A temp file
left by a crash is ignored by readers and removed when a Store is next created. Files are
created with mode 0o640, the directory with 0o750. An ``OSError`` while writing (a full
disk, a read-only mount) becomes a :class:`StateError` carrying the errno text, and the
previous file stays as it was.

Corruption policy. A *missing* file means "nothing stored". A file that cannot be read, is
not JSON, has an unknown version, or holds an invalid entry (a bad server name, a wrong type,
an unknown or missing key) raises :class:`StateError` naming the file, the problem, and what
the operator can do. Nothing is ever silently dropped: losing an on-call engineer's override
without a word is worse than a daemon that refuses to start until someone has looked. The
action log is the one exception, being a record rather than state: a line that is not a
JSON object (typically the torn last line of a crash) is skipped and counted in
:attr:`ActionRecords.skipped_lines`, and the next append starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from lbhealthd.errors import InvalidName, StateError
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId

__all__ = ["FORMAT_VERSION", "ActionRecords", "OwnedEntry", "Store"]

FORMAT_VERSION = 1
FILE_MODE = 0o640
DIR_MODE = 0o750

OVERRIDES = "overrides.json"
OWNED = "owned.json"
ENGINE = "engine.json"
ACTIONS = "actions.jsonl"
LOCK = "lock"

_BLOB_NAME = re.compile(r"[a-z_]+")
_TEMP_NAME = re.compile(
    r"\.(" + "|".join(re.escape(n) for n in (OVERRIDES, OWNED, ENGINE)) + r")\.[0-9a-f]+\.tmp"
)
_READ_BLOCK = 64 * 1024

# What moving each file aside costs, so the operator can weigh it before doing so.
_ASIDE_COST = {
    OVERRIDES: "every manual override is then forgotten",
    OWNED: "the daemon then forgets which LB changes it made and leaves them to an operator",
    ENGINE: "flap counters and similar engine memory are then reset",
}


@dataclass(frozen=True, slots=True)
class OwnedEntry:
    """A change the daemon made in the LB itself: only these may it undo."""

    server: ServerId
    admin: AdminState
    since: float  # wall
    reason: str
    weight: int | None = None  # the weight it set, if it set one


class ActionRecords(list[dict[str, Any]]):
    """The records :meth:`Store.read_actions` returned, oldest first, plus how many lines it
    skipped because they were not JSON objects (a torn line left by a crash)."""

    skipped_lines: int

    def __init__(self, records: list[dict[str, Any]], skipped_lines: int) -> None:
        super().__init__(records)
        self.skipped_lines = skipped_lines


class _Invalid(Exception):
    """An entry of a state file is not what it should be (turned into a StateError)."""


class Store:
    """Access to every file in ``state_dir``; safe to use from several processes at once."""

    def __init__(self, state_dir: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(state_dir)
        self._clock = clock
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(self.dir, DIR_MODE)
        except OSError as exc:
            raise _write_error(self.dir, "create it", exc) from exc
        with self._locked():
            self._clean_temp_files()

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock that stamps action records."""
        return self._clock

    @classmethod
    def open(cls, state_dir: Path | str, *, clock: Callable[[], float] = time.time) -> Store:
        """Create a Store and read every state file once, so a damaged one stops start-up."""
        store = cls(state_dir, clock=clock)
        store.load_overrides()
        store.load_owned()
        store._read_blobs()
        return store

    # -- overrides --------------------------------------------------------------------------

    def load_overrides(self) -> dict[ServerId, Override]:
        """Every stored override by server; empty when none were ever stored."""
        return self._read_overrides()

    def put_override(self, override: Override) -> None:
        """Store ``override``, replacing any other override of the same server."""
        with self._locked():
            current = self._read_overrides()
            current[override.server] = override
            self._write_overrides(current)

    def remove_override(self, server: ServerId) -> Override | None:
        """Remove and return the override of ``server``, or None when it had none."""
        with self._locked():
            current = self._read_overrides()
            removed = current.pop(server, None)
            if removed is not None:
                self._write_overrides(current)
            return removed

    def prune_expired(self, wall: float) -> list[Override]:
        """Remove the overrides expired at wall time ``wall`` and return them by server."""
        with self._locked():
            current = self._read_overrides()
            expired = [o for o in current.values() if o.expired(wall)]
            if expired:
                for o in expired:
                    del current[o.server]
                self._write_overrides(current)
            return sorted(expired, key=lambda o: o.server)

    def _read_overrides(self) -> dict[ServerId, Override]:
        path = self.dir / OVERRIDES
        items = _read_document(path, "overrides", list)
        result: dict[ServerId, Override] = {}
        for i, item in enumerate(items or []):
            try:
                o = _override_from_json(item)
                if o.server in result:
                    raise _Invalid(f"a second override for {o.server}")
            except _Invalid as exc:
                raise _corrupt(path, f"entry {i}: {exc}") from None
            result[o.server] = o
        return result

    def _write_overrides(self, overrides: Mapping[ServerId, Override]) -> None:
        items = [_override_to_json(overrides[s]) for s in sorted(overrides)]
        self._write_document(OVERRIDES, "overrides", items)

    # -- ownership --------------------------------------------------------------------------

    def load_owned(self) -> dict[ServerId, OwnedEntry]:
        """What the daemon changed in the LB itself, by server; empty when nothing."""
        path = self.dir / OWNED
        items = _read_document(path, "owned", list)
        result: dict[ServerId, OwnedEntry] = {}
        for i, item in enumerate(items or []):
            try:
                entry = _owned_from_json(item)
                if entry.server in result:
                    raise _Invalid(f"a second entry for {entry.server}")
            except _Invalid as exc:
                raise _corrupt(path, f"entry {i}: {exc}") from None
            result[entry.server] = entry
        return result

    def save_owned(self, entries: Mapping[ServerId, OwnedEntry]) -> None:
        """Replace the whole ownership record with ``entries``."""
        for key, entry in entries.items():
            if key != entry.server:
                raise ValueError(f"owned entry for {entry.server} filed under {key}")
        items = [_owned_to_json(entries[s]) for s in sorted(entries)]
        with self._locked():
            self._write_document(OWNED, "owned", items)

    # -- engine memory ----------------------------------------------------------------------

    def load_blob(self, name: str) -> dict[str, Any] | None:
        """The blob stored under ``name``, or None when there is none."""
        _check_blob_name(name)
        return self._read_blobs().get(name)

    def save_blob(self, name: str, data: Mapping[str, Any]) -> None:
        """Store ``data`` (JSON-serialisable) under ``name``, replacing what was there."""
        self.save_blobs({name: data})

    def save_blobs(self, named: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several blobs in one write, each replacing what was there under its name."""
        for name in named:
            _check_blob_name(name)
        with self._locked():
            blobs = self._read_blobs()
            blobs.update({name: dict(data) for name, data in named.items()})
            self._write_document(ENGINE, "blobs", dict(sorted(blobs.items())))

    def _read_blobs(self) -> dict[str, dict[str, Any]]:
        path = self.dir / ENGINE
        blobs = _read_document(path, "blobs", dict) or {}
        for name, value in blobs.items():
            if _BLOB_NAME.fullmatch(name) is None:
                raise _corrupt(path, f"blob name {name!r} is not of the form [a-z_]+")
            if not isinstance(value, dict):
                raise _corrupt(path, f"blob {name!r} is a {_kind(value)}, not an object")
        return blobs

    # -- action log -------------------------------------------------------------------------

    def append_action(self, **fields: Any) -> dict[str, Any]:
        """Append one record to the action log, durably, and return it as written.

        ``ts`` (wall seconds) and ``time`` (ISO 8601, UTC) are added; values JSON cannot
        hold (a ServerId, say) are written as their ``str``.
        """
        return self.append_actions([(self._clock(), fields)])[0]

    def append_actions(
        self, batch: Sequence[tuple[float, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Append several records, each ``(ts, fields)``, in one durable write."""
        records = []
        for ts, fields in batch:
            for reserved in ("ts", "time"):
                if reserved in fields:
                    raise ValueError(f"{reserved!r} is set by the action log itself")
            record: dict[str, Any] = {"ts": ts, "time": _iso_utc(ts)}
            # A ServerId is a tuple, which JSON would write as a list: written as POOL/SERVER.
            record.update({k: str(v) if isinstance(v, ServerId) else v for k, v in fields.items()})
            records.append(record)
        if not records:
            return records
        data = b"".join(
            json.dumps(r, default=str, allow_nan=False).encode() + b"\n" for r in records
        )
        path = self.dir / ACTIONS
        with self._locked():
            try:
                fd, created = _open_creating(path, os.O_RDWR | os.O_APPEND)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        data = b"\n" + data  # a torn last line: start afresh after it
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:
                    _fsync_dir(self.dir)
            except OSError as exc:
                raise _write_error(path, "append to it", exc) from exc
        return records

    def read_actions(self, limit: int | None = None) -> ActionRecords:
        """The last ``limit`` records of the action log (all when None), oldest first.

        Lines that are not JSON objects are skipped and counted in ``skipped_lines``; with a
        limit, only the lines read to find those records are counted.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        path = self.dir / ACTIONS
        records: list[dict[str, Any]] = []
        skipped = 0
        if limit == 0:
            return ActionRecords(records, skipped)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return ActionRecords(records, skipped)
        except OSError as exc:
            raise _read_error(path, exc) from exc
        with f:
            try:
                for raw in _lines_backwards(f):
                    if not raw.strip():
                        continue
                    record = _parse_record(raw)
                    if record is None:
                        skipped += 1
                        continue
                    records.append(record)
                    if limit is not None and len(records) >= limit:
                        break
            except OSError as exc:
                raise _read_error(path, exc) from exc
        records.reverse()
        return ActionRecords(records, skipped)

    # -- files ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        path = self.dir / LOCK
        try:
            fd, _ = _open_creating(path, os.O_RDWR)
        except OSError as exc:
            raise _write_error(path, "open it", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _clean_temp_files(self) -> None:
        """Remove temp files a crashed writer left; only call it holding the lock."""
        for entry in self.dir.iterdir():
            if _TEMP_NAME.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def _write_document(self, filename: str, key: str, value: object) -> None:
        """Atomically replace ``filename`` with a versioned document; hold the lock."""
        data = json.dumps(
            {"version": FORMAT_VERSION, key: value}, indent=1, allow_nan=False
        ).encode()
        path = self.dir / filename
        temp = self.dir / f".{filename}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                _write_all(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise _write_error(path, "write it", exc) from exc
        try:
            _fsync_dir(self.dir)
        except OSError as exc:
            text = _os_text(exc)
            raise StateError(
                f"{path}: written, but the directory fsync failed: {text}; the new version may "
                f"not survive a power loss. Check the file system of {self.dir}."
            ) from exc


# -- reading and checking -------------------------------------------------------------------


def _read_document(path: Path, key: str, kind: type[Any]) -> Any:
    """The checked ``key`` member of a versioned document, or None when the file is missing."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _read_error(path, exc) from exc
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _corrupt(path, f"the document is a {_kind(doc)}, not an object")
    version = doc.get("version")
    if type(version) is not int:
        raise _corrupt(path, f"no integer 'version' (found {version!r})")
    if version != FORMAT_VERSION:
        raise _corrupt(
            path, f"format version {version} is not the supported version {FORMAT_VERSION}"
        )
    extra = sorted(set(doc) - {"version", key})
    if extra:
        raise _corrupt(path, f"unknown keys {extra}")
    if key not in doc:
        raise _corrupt(path, f"no {key!r} member")
    value = doc[key]
    if not isinstance(value, kind):
        raise _corrupt(path, f"{key!r} is a {_kind(value)}, not a {_kind(kind())}")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number lbhealthd writes")


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _lines_backwards(f: BinaryIO) -> Iterator[bytes]:
    """The lines of ``f`` from the last to the first, without their newlines."""
    pos = f.seek(0, os.SEEK_END)
    rest = b""
    while pos > 0:
        step = min(_READ_BLOCK, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + rest).split(b"\n")
        rest = parts[0]
        yield from reversed(parts[1:])
    yield rest


def _fields(item: object, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _Invalid(f"a {_kind(item)}, not an object")
    missing = sorted(required - set(item))
    if missing:
        raise _Invalid(f"missing {missing}")
    unknown = sorted(set(item) - required - optional)
    if unknown:
        raise _Invalid(f"unknown keys {unknown}")
    return item


def _server(item: Mapping[str, Any]) -> ServerId:
    text = _text(item, "server")
    try:
        return ServerId.parse(text)
    except InvalidName as exc:
        raise _Invalid(str(exc)) from None


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise _Invalid(f"{key!r} is a {_kind(value)}, not a string")
    return value


def _number(item: Mapping[str, Any], key: str) -> float:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(f"{key!r} is {value!r}, not a finite number")
    return float(value)


def _optional_number(item: Mapping[str, Any], key: str) -> float | None:
    return None if item.get(key) is None else _number(item, key)


_E = TypeVar("_E", OverrideKind, AdminState)


def _choice(item: Mapping[str, Any], key: str, enum: type[_E]) -> _E:
    value = _text(item, key)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise _Invalid(f"{key!r} is {value!r}, not one of {allowed}") from None


_OVERRIDE_KEYS = {"server", "kind", "reason", "who", "created_at"}


def _override_from_json(item: object) -> Override:
    d = _fields(item, _OVERRIDE_KEYS, {"expires_at"})
    return Override(
        server=_server(d),
        kind=_choice(d, "kind", OverrideKind),
        reason=_text(d, "reason"),
        who=_text(d, "who"),
        created_at=_number(d, "created_at"),
        expires_at=_optional_number(d, "expires_at"),
    )


def _override_to_json(o: Override) -> dict[str, Any]:
    return {
        "server": str(o.server),
        "kind": o.kind.value,
        "reason": o.reason,
        "who": o.who,
        "created_at": o.created_at,
        "expires_at": o.expires_at,
    }


def _owned_from_json(item: object) -> OwnedEntry:
    d = _fields(item, {"server", "admin", "since", "reason"}, {"weight"})
    weight = d.get("weight")
    if weight is not None and (type(weight) is not int or weight < 0):
        raise _Invalid(f"'weight' is {weight!r}, not a non-negative integer")
    return OwnedEntry(
        server=_server(d),
        admin=_choice(d, "admin", AdminState),
        since=_number(d, "since"),
        reason=_text(d, "reason"),
        weight=weight,
    )


def _owned_to_json(e: OwnedEntry) -> dict[str, Any]:
    return {
        "server": str(e.server),
        "admin": e.admin.value,
        "since": e.since,
        "reason": e.reason,
        "weight": e.weight,
    }


def _check_blob_name(name: str) -> None:
    if not isinstance(name, str) or _BLOB_NAME.fullmatch(name) is None:
        raise ValueError(f"blob name {name!r} must be of the form [a-z_]+")


def _kind(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")


def _iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# -- low-level writes -----------------------------------------------------------------------


def _open_creating(path: Path, flags: int) -> tuple[int, bool]:
    """Open ``path``, creating it with mode 0o640 if missing; return (fd, created)."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags), False
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
    except OSError:
        os.close(fd)
        raise
    return fd, True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- errors ---------------------------------------------------------------------------------


def _corrupt(path: Path, problem: str) -> StateError:
    cost = _ASIDE_COST.get(path.name, "its contents are then lost")
    return StateError(
        f"{path}: {problem}. lbhealthd will not run over a damaged state file, since silently "
        f"dropping an operator's decision is worse than not starting. Inspect it and fix it, "
        f"or move it aside (mv {path} {path}.bad; {cost}), then start again."
    )


def _os_text(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)


def _read_error(path: Path, exc: OSError) -> StateError:
    text = _os_text(exc)
    return StateError(
        f"{path}: cannot be read: {text}. Check that it is a file the lbhealthd user may read."
    )


def _write_error(path: Path, what: str, exc: OSError) -> StateError:
    text = _os_text(exc)
    return StateError(
        f"{path}: could not {what}: {text}. The previous version, if any, is unchanged; "
        f"free space or fix permissions in {path.parent} and retry."
    )
