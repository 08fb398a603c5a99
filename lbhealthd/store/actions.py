"""The action log, ``actions.jsonl``: one JSON object per line, each with ``ts`` (wall seconds)
and ``time`` (ISO 8601, UTC), appended durably and read from the end.

Being a record rather than state, the log tolerates damage: a line that is not a JSON object
(typically the torn last line of a crash) is skipped and counted in
:attr:`ActionRecords.skipped_lines`, and the next append starts on a fresh line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

from lbhealthd.model import ServerId
from lbhealthd.store.files import StateDir, open_file, read_error, write_all, write_error

ACTIONS = "actions.jsonl"

_READ_BLOCK = 64 * 1024
# A line longer than this is no record lbhealthd wrote (one is well under a kilobyte): it is
# skipped as damaged rather than held in memory whole.
MAX_LINE = 1024 * 1024


class ActionRecords(list[dict[str, Any]]):
    """The records :meth:`Store.read_actions` returned, oldest first, plus how many lines it
    skipped because they were not JSON objects (a torn line left by a crash)."""

    skipped_lines: int

    def __init__(self, records: list[dict[str, Any]], skipped_lines: int) -> None:
        super().__init__(records)
        self.skipped_lines = skipped_lines


def new_records(batch: Sequence[tuple[float, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The records to append for ``batch``, each ``(ts, fields)``, stamped and JSON-ready."""
    records = []
    for ts, fields in batch:
        for reserved in ("ts", "time"):
            if reserved in fields:
                raise ValueError(f"{reserved!r} is set by the action log itself")
        record: dict[str, Any] = {"ts": ts, "time": _iso_utc(ts)}
        # A ServerId is a tuple, which JSON would write as a list: written as POOL/SERVER.
        record.update({k: str(v) if isinstance(v, ServerId) else v for k, v in fields.items()})
        records.append(record)
    return records


def encode_records(records: Sequence[Mapping[str, Any]]) -> bytes:
    """``records`` as log lines; values JSON cannot hold are written as their ``str``."""
    return b"".join(json.dumps(r, default=str, allow_nan=False).encode() + b"\n" for r in records)


def append_lines(d: StateDir, data: bytes) -> None:
    """Append encoded lines to the log in ``d``, durably; hold the writers' lock."""
    path = d.path / ACTIONS
    try:
        fd, created = open_file(d, ACTIONS, os.O_RDWR | os.O_APPEND, create=True)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn last line: start afresh after it
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            os.fsync(d.fd)
    except OSError as exc:
        raise write_error(path, "append to it", exc) from exc


def read_records(d: StateDir, limit: int | None) -> ActionRecords:
    """The last ``limit`` records of the log in ``d`` (all when None), oldest first.

    Lines that are not JSON objects, or longer than any record, are skipped and counted in
    ``skipped_lines``; with a limit, only the lines read to find those records are counted.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    path = d.path / ACTIONS
    records: list[dict[str, Any]] = []
    skipped = 0
    if limit == 0:
        return ActionRecords(records, skipped)
    try:
        fd, _ = open_file(d, ACTIONS, os.O_RDONLY)
    except FileNotFoundError:
        return ActionRecords(records, skipped)
    except OSError as exc:
        raise read_error(path, exc) from exc
    with os.fdopen(fd, "rb") as f:
        try:
            for raw in _lines_backwards(f):
                if raw is not None and not raw.strip():
                    continue
                record = None if raw is None else _parse_record(raw)
                if record is None:
                    skipped += 1
                    continue
                records.append(record)
                if limit is not None and len(records) >= limit:
                    break
        except OSError as exc:
            raise read_error(path, exc) from exc
    records.reverse()
    return ActionRecords(records, skipped)


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _lines_backwards(f: BinaryIO) -> Iterator[bytes | None]:
    """The lines of ``f`` from the last to the first, without their newlines; None stands for
    a line longer than MAX_LINE, which is not kept."""
    pos = f.seek(0, os.SEEK_END)
    rest = b""  # the start of the buffer: a line whose beginning is further back
    overlong = False  # rest was dropped: the line it belongs to is too long
    while pos > 0:
        step = min(_READ_BLOCK, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + rest).split(b"\n")
        rest = parts[0]
        newer = parts[1:]
        if newer and overlong:
            yield None  # this block holds the start of the overlong line: it is whole
            newer.pop()
            overlong = False
        yield from (None if len(line) > MAX_LINE else line for line in reversed(newer))
        if overlong or len(rest) > MAX_LINE:
            rest = b""
            overlong = True
    yield None if overlong else rest


def _iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
