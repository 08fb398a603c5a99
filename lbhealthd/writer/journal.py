"""Writes to ``state_dir``, staged in memory and made durable together, off the event loop.

The LB writer stages ownership, its pending changes and action records here; the reconciler
stages the engine's memory and the pool reader its blobs. ``sync()`` makes everything staged
before the call durable: one whole-file write per document staged, one append for all staged
action records, in a worker thread, so a round that changes hundreds of servers costs a few
writes and never holds the event loop.

Write-ahead: the writer stages its intent for a server and awaits ``sync()`` before it sends
the command, then stages the command's action record and awaits ``sync()`` again once the LB
has taken it. Callers whose changes a write under way already holds wait for it; the others
wait for the next one, which holds everything staged until it starts: however many callers
sync together, they share one or two writes.

A failed write is logged (``state_write_failed``, with the file) and told to ``on_failure``
(from the worker thread), never raised: the daemon
keeps serving on a full disk. A document that failed is written again at the next sync
(unless a newer version was staged meanwhile); action records that failed are dropped (memory
would grow for as long as the disk is full): the JSON log still carries every event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from lbhealthd.errors import LbhealthdError
from lbhealthd.model import ServerId
from lbhealthd.store import OwnedEntry, Store

log = structlog.get_logger("lbhealthd.writer.journal")

__all__ = ["Journal"]


class Journal:
    """Staged writes for one Store; ``sync()`` writes them."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._on_failure = on_failure
        self._owned: Mapping[ServerId, OwnedEntry] | None = None
        self._blobs: dict[str, Callable[[], Mapping[str, Any]]] = {}
        self._records: list[tuple[float, dict[str, Any]]] = []
        self._writing: asyncio.Future[None] | None = None  # the write under way
        self._staged = 0  # changes staged so far (a generation number)
        self._written = 0  # generation covered by the last write
        self.writes = 0  # syncs that wrote something (for tests and benchmarks)

    @property
    def dirty(self) -> bool:
        return self._owned is not None or bool(self._blobs) or bool(self._records)

    def stage_owned(self, entries: Mapping[ServerId, OwnedEntry]) -> None:
        """The ownership record: ``entries`` is read (copied) when the write starts."""
        self._owned = entries
        self._staged += 1

    def stage_blob(self, name: str, produce: Callable[[], Mapping[str, Any]]) -> None:
        """An engine blob: ``produce()`` is called when the write starts, once however often
        the blob was staged since the last write, and must return data it will not change."""
        self._blobs[name] = produce
        self._staged += 1

    def stage_record(self, **fields: Any) -> None:
        """An action-log record, stamped now."""
        self._records.append((self._clock(), fields))
        self._staged += 1

    async def sync(self) -> None:
        """Make everything staged before this call durable (see the module docstring)."""
        target = self._staged
        while self._written < target:
            if self._writing is not None:
                # Every caller waiting on this write resumes in the same turn of the loop, so
                # the commands they send next leave together.
                await asyncio.shield(self._writing)
                continue
            covers = self._staged
            self._writing = asyncio.get_running_loop().create_future()
            try:
                work = self._take()
                failed = await asyncio.to_thread(self._write, work)
                self._written = covers
                self._restore(failed)
            finally:
                self._writing.set_result(None)
                self._writing = None

    # --- internals -------------------------------------------------------------------------

    _Work = tuple[
        dict[ServerId, OwnedEntry] | None,
        dict[str, dict[str, Any]],
        list[tuple[float, dict[str, Any]]],
    ]

    def _take(self) -> _Work:
        """What is staged, as data of its own (on the loop's thread, before the write)."""
        owned = None if self._owned is None else dict(self._owned)
        blobs = {name: dict(produce()) for name, produce in self._blobs.items()}
        work = (owned, blobs, self._records)
        self._owned, self._blobs, self._records = None, {}, []
        return work

    def _write(self, work: _Work) -> _Work:
        """Write ``work``; return what could not be written (to be tried again)."""
        owned, blobs, records = work
        self.writes += 1
        failed_owned: dict[ServerId, OwnedEntry] | None = None
        failed_blobs: dict[str, dict[str, Any]] = {}
        if owned is not None:
            try:
                self.store.save_owned(owned)
            except LbhealthdError as exc:
                log.error("state_write_failed", error=str(exc), file="owned")
                self._failed("owned")
                failed_owned = owned
        if blobs:
            try:
                self.store.save_blobs(blobs)
            except LbhealthdError as exc:
                log.error("state_write_failed", error=str(exc), file=",".join(sorted(blobs)))
                for name in sorted(blobs):
                    self._failed(name)
                failed_blobs = blobs
        if records:
            try:
                self.store.append_actions(records)
            except LbhealthdError as exc:
                log.error(
                    "state_write_failed", error=str(exc), file="actions", records=len(records)
                )
                self._failed("actions")
        return failed_owned, failed_blobs, []

    def _failed(self, file: str) -> None:
        if self._on_failure is not None:
            self._on_failure(file)

    def _restore(self, failed: _Work) -> None:
        """Put back what failed, under anything staged meanwhile (newer wins)."""
        owned, blobs, _ = failed
        if owned is not None and self._owned is None:
            self._owned = owned
        for name, data in blobs.items():
            self._blobs.setdefault(name, _constant(data))
        if owned is not None or blobs:
            self._staged += 1  # the next sync writes them again


def _constant(data: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: data
