"""The Store: every read and read-modify-write of the files in ``daemon.state_dir``.

Writers (the daemon and the on-call CLI, in separate processes) hold an exclusive flock on
``lock`` for the whole read-modify-write, so neither loses the other's update; readers need no
lock. Every operation opens and checks the directory afresh (see lbhealthd.store.files), so one
made unsafe while the daemon runs is refused from then on. Creating a Store creates the
directory (mode 0o750) if missing and removes the temp files a crashed writer left; run as root
in another user's directory, it gives that user back the state files root owns.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lbhealthd.model import Override, ServerId
from lbhealthd.store.actions import (
    ACTIONS,
    ActionRecords,
    append_lines,
    encode_records,
    new_records,
    read_records,
)
from lbhealthd.store.documents import (
    ENGINE,
    OVERRIDES,
    OWNED,
    clean_temp_files,
    corrupt,
    kind_of,
    read_document,
    write_document,
)
from lbhealthd.store.entries import (
    BLOB_NAME,
    InvalidEntry,
    OwnedEntry,
    check_blob_name,
    override_from_json,
    override_to_json,
    owned_from_json,
    owned_to_json,
)
from lbhealthd.store.files import DIR_MODE, StateDir, hand_back, locked, opened_dir, write_error

LOCK = "lock"
_FILES = (OVERRIDES, OWNED, ENGINE, ACTIONS, LOCK)


class Store:
    """Access to every file in ``state_dir``; safe to use from several processes at once."""

    def __init__(self, state_dir: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(state_dir)
        self._clock = clock
        self._held: StateDir | None = None  # inside serialised(): opened and locked already
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(self.dir, DIR_MODE)
        except OSError as exc:
            raise write_error(self.dir, "create it", exc) from exc
        with self._locked() as d:
            clean_temp_files(d)
            hand_back(d, _FILES)

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
        with store._opened() as d:
            store._read_blobs(d)
        return store

    # -- overrides --------------------------------------------------------------------------

    def load_overrides(self) -> dict[ServerId, Override]:
        """Every stored override by server; empty when none were ever stored."""
        with self._opened() as d:
            return self._read_overrides(d)

    def put_override(self, override: Override) -> None:
        """Store ``override``, replacing any other override of the same server."""
        with self._locked() as d:
            current = self._read_overrides(d)
            current[override.server] = override
            self._write_overrides(d, current)

    def remove_override(self, server: ServerId) -> Override | None:
        """Remove and return the override of ``server``, or None when it had none."""
        with self._locked() as d:
            current = self._read_overrides(d)
            removed = current.pop(server, None)
            if removed is not None:
                self._write_overrides(d, current)
            return removed

    def prune_expired(self, wall: float) -> list[Override]:
        """Remove the overrides expired at wall time ``wall`` and return them by server."""
        with self._locked() as d:
            current = self._read_overrides(d)
            expired = [o for o in current.values() if o.expired(wall)]
            if expired:
                for o in expired:
                    del current[o.server]
                self._write_overrides(d, current)
            return sorted(expired, key=lambda o: o.server)

    def _read_overrides(self, d: StateDir) -> dict[ServerId, Override]:
        return _entries(d, OVERRIDES, "overrides", override_from_json, "a second override")

    def _write_overrides(self, d: StateDir, overrides: Mapping[ServerId, Override]) -> None:
        items = [override_to_json(overrides[s]) for s in sorted(overrides)]
        write_document(d, OVERRIDES, "overrides", items)

    # -- ownership --------------------------------------------------------------------------

    def load_owned(self) -> dict[ServerId, OwnedEntry]:
        """What the daemon changed in the LB itself, by server; empty when nothing."""
        with self._opened() as d:
            return _entries(d, OWNED, "owned", owned_from_json, "a second entry")

    def save_owned(self, entries: Mapping[ServerId, OwnedEntry]) -> None:
        """Replace the whole ownership record with ``entries``."""
        for key, entry in entries.items():
            if key != entry.server:
                raise ValueError(f"owned entry for {entry.server} filed under {key}")
        items = [owned_to_json(entries[s]) for s in sorted(entries)]
        with self._locked() as d:
            write_document(d, OWNED, "owned", items)

    # -- engine memory ----------------------------------------------------------------------

    def load_blob(self, name: str) -> dict[str, Any] | None:
        """The blob stored under ``name``, or None when there is none."""
        check_blob_name(name)
        with self._opened() as d:
            return self._read_blobs(d).get(name)

    def save_blob(self, name: str, data: Mapping[str, Any]) -> None:
        """Store ``data`` (JSON-serialisable) under ``name``, replacing what was there."""
        self.save_blobs({name: data})

    def blob(self, name: str) -> Blob:
        """One named blob as something to load and save (what a driver keeps in state_dir)."""
        check_blob_name(name)
        return Blob(self, name)

    def save_blobs(self, named: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several blobs in one write, each replacing what was there under its name."""
        for name in named:
            check_blob_name(name)
        with self._locked() as d:
            blobs = self._read_blobs(d)
            blobs.update({name: dict(data) for name, data in named.items()})
            write_document(d, ENGINE, "blobs", dict(sorted(blobs.items())))

    def _read_blobs(self, d: StateDir) -> dict[str, dict[str, Any]]:
        path = d.path / ENGINE
        blobs = read_document(d, ENGINE, "blobs", dict) or {}
        for name, value in blobs.items():
            if BLOB_NAME.fullmatch(name) is None:
                raise corrupt(path, f"blob name {name!r} is not of the form [a-z_]+")
            if not isinstance(value, dict):
                raise corrupt(path, f"blob {name!r} is a {kind_of(value)}, not an object")
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
        records = new_records(batch)
        if not records:
            return records
        data = encode_records(records)
        with self._locked() as d:
            append_lines(d, data)
        return records

    def read_actions(self, limit: int | None = None) -> ActionRecords:
        """The last ``limit`` records of the action log (all when None), oldest first.

        Lines that are not JSON objects (or longer than any record) are skipped and counted in
        ``skipped_lines``; with a limit, only the lines read to find those records are counted.
        """
        with self._opened() as d:
            return read_records(d, limit)

    # -- the writers' lock ------------------------------------------------------------------

    def _opened(self) -> contextlib.AbstractContextManager[StateDir]:
        """state_dir, opened and checked, for one read (the held one inside ``serialised``)."""
        if self._held is not None:
            return contextlib.nullcontext(self._held)
        return opened_dir(self.dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[StateDir]:
        """state_dir, opened and checked, with the writers' lock held, for a read-modify-write
        (held already inside ``serialised``)."""
        if self._held is not None:
            yield self._held
            return
        with opened_dir(self.dir) as d, locked(d, LOCK):
            yield d

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        """Hold the writers' lock across several reads and writes of this Store, so that what
        is decided from a read (a cap checked against the overrides) is written before any
        other process reads. Blocks while another process holds it; the Store's own reads
        and writes inside the block do not take it again."""
        if self._held is not None:
            yield
            return
        with opened_dir(self.dir) as d, locked(d, LOCK):
            self._held = d
            try:
                yield
            finally:
                self._held = None


_E = TypeVar("_E", Override, OwnedEntry)


def _entries(
    d: StateDir, name: str, kind: str, parse: Callable[[Any], _E], twice: str
) -> dict[ServerId, _E]:
    """The entries of a list document, by server; a damaged entry or a server listed twice
    makes the whole file damaged (naming the entry)."""
    items = read_document(d, name, kind, list)
    result: dict[ServerId, _E] = {}
    for i, item in enumerate(items or []):
        try:
            entry = parse(item)
            if entry.server in result:
                raise InvalidEntry(f"{twice} for {entry.server}")
        except InvalidEntry as exc:
            raise corrupt(d.path / name, f"entry {i}: {exc}") from None
        result[entry.server] = entry
    return result


class Blob:
    """One named blob of a Store: ``load()`` and ``save(data)``."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    def load(self) -> dict[str, Any] | None:
        return self.store.load_blob(self.name)

    def save(self, data: Mapping[str, Any]) -> None:
        self.store.save_blob(self.name, data)
