"""The file operations every state file relies on, and the StateError texts for OS failures.

Files are created with mode 0o640 whatever the umask, written whole, and fsynced; the directory
is fsynced after a file in it is created or replaced, so the change survives a power loss. An
exclusive ``fcntl.flock`` on one file serialises the writers of separate processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lbhealthd.errors import StateError

FILE_MODE = 0o640
DIR_MODE = 0o750


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the ``with`` block."""
    try:
        fd, _ = open_creating(path, os.O_RDWR)
    except OSError as exc:
        raise write_error(path, "open it", exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_creating(path: Path, flags: int) -> tuple[int, bool]:
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


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``, however many ``os.write`` calls that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` durable (a created or replaced file's name)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_text(exc: OSError) -> str:
    """The errno text of ``exc`` ("No space left on device"), for the operator."""
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)


def read_error(path: Path, exc: OSError) -> StateError:
    text = os_text(exc)
    return StateError(
        f"{path}: cannot be read: {text}. Check that it is a file the lbhealthd user may read."
    )


def write_error(path: Path, what: str, exc: OSError) -> StateError:
    text = os_text(exc)
    return StateError(
        f"{path}: could not {what}: {text}. The previous version, if any, is unchanged; "
        f"free space or fix permissions in {path.parent} and retry."
    )
