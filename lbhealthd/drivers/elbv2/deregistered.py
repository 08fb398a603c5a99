"""The targets lbhealthd deregistered, remembered so it can register them again.

A deregistered target leaves ``DescribeTargetHealth`` once drained; only this record says what
to register again (Id, port, Availability Zone) and which state, DRAIN or MAINT, it was given.
The record (``{"targets": {"POOL/SERVER": {...}}}``) is kept durably so a restarted daemon can
still restore them: by the daemon and the CLI in state_dir, through the store like the rest of
lbhealthd's state; by a driver used on its own, in a file. A record that cannot be read or
written is logged, and the driver carries on with what it holds in memory.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lbhealthd.errors import LbhealthdError
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


class Keeper(Protocol):
    """Where the record is kept: a blob of the daemon's state_dir (lbhealthd.store), or a
    file of its own (FileKeeper) for a driver used on its own."""

    def load(self) -> Mapping[str, Any] | None: ...
    def save(self, data: Mapping[str, Any]) -> None: ...


class FileKeeper:
    """The record in a JSON file of its own, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Mapping[str, Any] | None:
        # Never follows a link, never blocks on a FIFO, never reads without bound: the file
        # may sit in a directory others could once write.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{self.path} is not a regular file")
            if info.st_size > _MAX_BYTES:
                raise ValueError(f"{self.path} is {info.st_size} bytes, more than {_MAX_BYTES}")
            text = f.read(_MAX_BYTES + 1).decode("utf-8")
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path} holds a {type(raw).__name__}, not an object")
        return raw

    def save(self, data: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".elbv2-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


_MAX_BYTES = 4 * 1024 * 1024

_FAILURES = (LbhealthdError, OSError, ValueError, KeyError, TypeError)


def load_remembered(
    keeper: Keeper | None, legacy: Path | None = None
) -> dict[ServerId, Remembered]:
    """The targets ``keeper`` holds (or, when it holds none, the ``legacy`` file: the record's
    earlier place); none when there is no record or it cannot be read (logged)."""
    try:
        raw = keeper.load() if keeper is not None else None
        if raw is None and legacy is not None:
            raw = FileKeeper(legacy).load()
        if raw is None:
            return {}
        remembered = {
            ServerId.parse(key): Remembered(
                str(v["id"]), v.get("port"), v.get("zone"), AdminState(v["admin"])
            )
            for key, v in dict(raw["targets"]).items()
        }
    except _FAILURES as exc:
        log.error("elbv2_state_unreadable", error=str(exc))
        return {}
    return {sid: r for sid, r in remembered.items() if r.admin in OUT_STATES}


def save_remembered(
    keeper: Keeper | None, remembered: Mapping[ServerId, Remembered], legacy: Path | None = None
) -> None:
    """Replace the record with ``remembered``, then drop the ``legacy`` file if any; a
    failure is logged, not raised (the driver carries on with what it holds in memory)."""
    if keeper is None:
        return
    data = {
        "targets": {
            str(sid): {"id": r.id, "port": r.port, "zone": r.zone, "admin": r.admin.value}
            for sid, r in sorted(remembered.items())
        }
    }
    try:
        keeper.save(data)
        if legacy is not None and legacy.exists():
            legacy.unlink()
    except _FAILURES as exc:
        log.error("elbv2_state_write_failed", error=str(exc))
