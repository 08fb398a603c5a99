"""The operators' overrides as the daemon decides with them: read from state_dir every round
(expired ones pruned and recorded), ended when an operator changes the server by hand, and the
keep-ins the engine asks for recorded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from lbhealthd.errors import LbhealthdError
from lbhealthd.model import Override, OverrideKind, Released, ServerId
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter

log = structlog.get_logger("lbhealthd.daemon.reconciler")

HAND = "lb (changed by hand)"


class OverrideBook:
    """The current overrides (``current``) and every change the daemon makes to them."""

    def __init__(self, store: Store, writer: LbWriter) -> None:
        self.store = store
        self.writer = writer
        self.current: Mapping[ServerId, Override] = store.load_overrides()
        self._error: str | None = None

    def refresh(self, wall: float) -> None:
        """Prune the expired overrides and read the others; on a read error keep the ones
        read last (logged once per distinct error)."""
        try:
            for gone in self.store.prune_expired(wall):
                log.info(
                    "override_expired",
                    server=str(gone.server),
                    kind=gone.kind.value,
                    who=gone.who,
                    reason=gone.reason,
                )
                self.writer.record(
                    gone.server, "override_expired", who=gone.who, reason=gone.reason
                )
            self.current = self.store.load_overrides()
            self._error = None
        except LbhealthdError as exc:
            if str(exc) != self._error:
                log.error(
                    "state_unreadable",
                    error=str(exc),
                    note="keeping the overrides read last; fix or move the file aside",
                )
            self._error = str(exc)

    def end_out_override(self, sid: ServerId) -> None:
        """End a drain or maint override of a server an operator changed by hand."""
        override = self.current.get(sid)
        if override is None or override.kind is OverrideKind.READY:
            return
        try:
            self.store.remove_override(sid)
        except LbhealthdError as exc:
            log.error("state_write_failed", error=str(exc))
        self.current = {k: v for k, v in self.current.items() if k != sid}

    def keep_in(self, released: Iterable[Released], hold: float, wall: float) -> None:
        """Record the keep-in overrides the engine asked for (servers put back by hand), for
        ``hold`` seconds (none: without end)."""
        added = {}
        for r in released:
            if not r.keep_in:
                continue
            override = Override(
                r.server,
                OverrideKind.READY,
                "put back in rotation by hand",
                HAND,
                wall,
                wall + hold if hold > 0 else None,
            )
            try:
                self.store.put_override(override)
            except LbhealthdError as exc:
                log.error("state_write_failed", error=str(exc))
            added[r.server] = override
        if added:
            self.current = {**self.current, **added}
