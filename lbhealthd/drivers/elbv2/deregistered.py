"""The targets lbhealthd deregistered, remembered so it can register them again.

A deregistered target leaves ``DescribeTargetHealth`` once drained; only this record says what
to register again (Id, port, Availability Zone) and which state, DRAIN or MAINT, it was given.
The record is kept in a JSON file (``{"targets": {"POOL/SERVER": {...}}}``) so a restarted
daemon can still restore them. The file is replaced atomically; a file that cannot be read or
written is logged, and the driver carries on with what it holds in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from lbhealthd.model import AdminState, ServerId

if TYPE_CHECKING:
    from types_aiobotocore_elbv2.type_defs import TargetDescriptionTypeDef

log = structlog.get_logger("lbhealthd.drivers.elbv2")

# The admin states lbhealthd gives a target by deregistering it.
OUT_STATES = (AdminState.DRAIN, AdminState.MAINT)


@dataclass(frozen=True, slots=True)
class Remembered:
    """A target lbhealthd deregistered: what to register again, and the state it was given."""

    id: str
    port: int | None
    zone: str | None
    admin: AdminState

    def target(self) -> TargetDescriptionTypeDef:
        t: TargetDescriptionTypeDef = {"Id": self.id}
        if self.port is not None:
            t["Port"] = self.port
        if self.zone:
            t["AvailabilityZone"] = self.zone
        return t


def load_remembered(state_file: Path | None) -> dict[ServerId, Remembered]:
    """The targets recorded in ``state_file``; none when there is no file or it is unreadable."""
    if state_file is None or not state_file.exists():
        return {}
    try:
        raw = json.loads(state_file.read_text(encoding="utf-8"))
        return {
            ServerId.parse(key): Remembered(
                str(v["id"]), v.get("port"), v.get("zone"), AdminState(v["admin"])
            )
            for key, v in dict(raw["targets"]).items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("elbv2_state_unreadable", file=str(state_file), error=str(exc))
        return {}


def save_remembered(state_file: Path | None, remembered: Mapping[ServerId, Remembered]) -> None:
    """Replace ``state_file`` (if any) with ``remembered``; a failure is logged, not raised."""
    if state_file is None:
        return
    data = {
        "targets": {
            str(sid): {"id": r.id, "port": r.port, "zone": r.zone, "admin": r.admin.value}
            for sid, r in sorted(remembered.items())
        }
    }
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=state_file.parent, prefix=".elbv2-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, state_file)
    except OSError as exc:
        log.error("elbv2_state_write_failed", file=str(state_file), error=str(exc))
