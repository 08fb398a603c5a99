"""The file operations every state file relies on, and the StateError texts for OS failures.

Trust. Each operation opens state_dir once and checks it: it must be owned by the user lbhealthd
runs as or by root (root, running the on-call CLI, may use the daemon user's directory) and be
writable by no one else, since whoever may write it can replace what lbhealthd remembers. Every
file in it is opened relative to that descriptor with O_NOFOLLOW and O_NONBLOCK and must be a
regular file with a single link, owned by the directory's owner, lbhealthd's user or root: a
symlink, hard link, FIFO or device planted under a state file's name is refused, never followed,
blocked on, or read without end. What root creates in another user's state_dir is given to that
user, so that the daemon, running as it, can read it.

Files are created with mode 0o640 whatever the umask, written whole, and fsynced; the directory
is fsynced after a file in it is created or replaced, so the change survives a power loss. An
exclusive ``fcntl.flock`` on one file serialises the writers of separate processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lbhealthd.errors import StateError

FILE_MODE = 0o640
DIR_MODE = 0o750
# Far above anything lbhealthd writes (an override is ~200 bytes): the bound only stops a
# damaged or planted file from being read whole, on the event loop, into memory.
MAX_DOCUMENT = 16 * 1024 * 1024

_NO_SURPRISES = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


@dataclass(frozen=True, slots=True)
class StateDir:
    """state_dir, opened and checked: its path (for messages), its descriptor (every file in it
    is opened relative to it) and its owner (whom files root creates there are given to)."""

    path: Path
    fd: int
    uid: int
    gid: int


@contextlib.contextmanager
def opened_dir(path: Path) -> Iterator[StateDir]:
    """``path`` opened as a directory for the ``with`` block, once checked that only its owner
    (lbhealthd's user or root) may change it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(
            f"{path}: cannot be opened as a directory: {os_text(exc)}. Check daemon.state_dir."
        ) from exc
    try:
        st = os.fstat(fd)
        _check_dir(path, st)
        yield StateDir(path, fd, st.st_uid, st.st_gid)
    finally:
        os.close(fd)


def _check_dir(path: Path, st: os.stat_result) -> None:
    euid = os.geteuid()
    if euid != 0 and st.st_uid not in (euid, 0):
        raise StateError(
            f"{path}: owned by uid {st.st_uid}, not by uid {euid} (the user lbhealthd runs as) "
            f"or root: that user could replace what lbhealthd keeps there (operators' "
            f"overrides, the record of its own changes). Use a directory of lbhealthd's user "
            f"(chown {euid} {path}, once its files are checked), then start again."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "every user" if st.st_mode & stat.S_IWOTH else "its group"
        raise StateError(
            f"{path}: writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): another user "
            f"could replace what lbhealthd keeps there (operators' overrides, the record of its "
            f"own changes). Check the files in it, then chmod go-w {path} and start again."
        )


def open_file(d: StateDir, name: str, flags: int, *, create: bool = False) -> tuple[int, bool]:
    """Open ``name`` in ``d`` without following a link or blocking; with ``create``, create it
    if missing (see :func:`create_new`). Return (fd, created).

    Raises FileNotFoundError when it is missing (and not created), StateError when it is not a
    file of lbhealthd's, OSError otherwise.
    """
    if create:
        with contextlib.suppress(FileExistsError):
            return create_new(d, name, flags), True
    try:
        fd = os.open(name, flags | _NO_SURPRISES, dir_fd=d.fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _explain(d, name, exc) from exc
    try:
        _check_file(d, name, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd, False


def create_new(d: StateDir, name: str, flags: int) -> int:
    """Create ``name`` in ``d``, which must not exist (not even as a link): mode 0o640
    whatever the umask, owned by the directory's owner when root creates it."""
    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | _NO_SURPRISES, FILE_MODE, dir_fd=d.fd)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
        _give_to_owner(d, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def hand_back(d: StateDir, names: Iterable[str]) -> None:
    """As root, give the files of ``names`` that root owns to the directory's owner (an older
    root run of the on-call CLI left them so, and the daemon could not read them)."""
    if os.geteuid() != 0 or d.uid == 0:
        return
    for name in names:
        try:
            fd, _ = open_file(d, name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise write_error(d.path / name, "give it to the directory's owner", exc) from exc
        try:
            _give_to_owner(d, fd)
        except OSError as exc:
            raise write_error(d.path / name, "give it to the directory's owner", exc) from exc
        finally:
            os.close(fd)


def _give_to_owner(d: StateDir, fd: int) -> None:
    if os.geteuid() == 0:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (d.uid, d.gid):
            os.fchown(fd, d.uid, d.gid)


def _check_file(d: StateDir, name: str, st: os.stat_result) -> None:
    path = d.path / name
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, _KINDS.get(stat.S_IFMT(st.st_mode), "not a file"))
    if st.st_nlink > 1:
        raise StateError(
            f"{path}: has {st.st_nlink} hard links: it is also a file elsewhere, which "
            f"lbhealthd would change through it. Check how it got there, and move it aside "
            f"(mv {path} {path}.bad) or copy it in place of the link, then start again."
        )
    if st.st_uid not in (d.uid, os.geteuid(), 0):
        raise StateError(
            f"{path}: owned by uid {st.st_uid}, not by the owner of {d.path} (uid {d.uid}), "
            f"lbhealthd's user or root: lbhealthd did not write it (another user could have "
            f"left it while the directory was open to others). Check it, and move it aside "
            f"(mv {path} {path}.bad) or give it to uid {d.uid}, then start again."
        )


def _explain(d: StateDir, name: str, exc: OSError) -> OSError | StateError:
    """Why ``name`` could not be opened, when that is something other than the errno says."""
    try:
        st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
    except OSError:
        return exc
    path = d.path / name
    if not stat.S_ISREG(st.st_mode):
        return _not_regular(path, _KINDS.get(stat.S_IFMT(st.st_mode), "not a file"))
    if exc.errno == errno.EACCES:
        return StateError(
            f"{path}: uid {os.geteuid()} (lbhealthd) may not open it: it is owned by uid "
            f"{st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}. Give it to the owner of "
            f"{d.path} (chown {d.uid}:{d.gid} {path}; `lbhealthd status` run as root while "
            f"the daemon is stopped does so for every state file), then start again."
        )
    return exc


def _not_regular(path: Path, what: str) -> StateError:
    return StateError(
        f"{path}: {what}, not a regular file. lbhealthd reads and writes only its own regular "
        f"files in state_dir and follows no link: one planted here could make it read or "
        f"write another file, or block it. Check how it got there, move it aside "
        f"(mv {path} {path}.bad), then start again."
    )


def read_at_most(fd: int, limit: int) -> bytes | None:
    """The whole of the file ``fd``, or None when it holds more than ``limit`` bytes."""
    if os.fstat(fd).st_size > limit:
        return None
    chunks = []
    total = 0
    while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return b"".join(chunks)


@contextlib.contextmanager
def locked(d: StateDir, name: str) -> Iterator[None]:
    """Hold an exclusive flock on ``name`` in ``d`` (created if missing) for the block."""
    try:
        fd, _ = open_file(d, name, os.O_RDWR, create=True)
    except OSError as exc:
        raise write_error(d.path / name, "open it", exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``, however many ``os.write`` calls that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
