"""The control socket's place in the file system, checked before the daemon listens there.

The socket's directory must be one that only the daemon's user (or root) may change: owned by
one of them and writable by neither its group nor others. Otherwise another user could remove
the socket and bind their own in its place, and the on-call commands would talk to them. A
directory that does not exist is created with mode 0750. A socket file left by a daemon that
died is replaced; a daemon that answers on it means this one must not start.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from lbhealthd.errors import ControlError

__all__ = ["prepare"]


def prepare(path: str) -> None:
    """Make or check the socket's directory; replace a stale socket; refuse if a daemon
    answers. ControlError says what is wrong and what to do."""
    directory = Path(path).parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    _check_directory(directory)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left by a daemon that died
        return
    except OSError as exc:
        raise ControlError(f"cannot check {path}: {exc}") from exc
    finally:
        probe.close()
    raise ControlError(f"another lbhealthd answers on {path}; refusing to start a second one")


def _check_directory(directory: Path) -> None:
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise ControlError(f"cannot use {directory} for the control socket: {exc}") from exc
    problems = []
    if st.st_uid not in (0, os.geteuid()):
        problems.append(f"owned by uid {st.st_uid}")
    writers = [who for bit, who in ((0o020, "its group"), (0o002, "others")) if st.st_mode & bit]
    if writers:
        mode = oct(stat.S_IMODE(st.st_mode))
        problems.append(f"writable by {' and '.join(writers)} (mode {mode})")
    if problems:
        raise ControlError(
            f"refusing to create the control socket in {directory}: it is "
            f"{' and '.join(problems)}, so another user could replace the socket and answer "
            "in the daemon's place. Use a directory only the daemon's user may write (mode "
            "0750, as systemd's RuntimeDirectory= makes it), or name a subdirectory in "
            "daemon.control_socket: lbhealthd creates it so"
        )
