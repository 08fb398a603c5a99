"""Who is at the other end of a connected unix socket, as the kernel saw it at connect time.

``SO_PEERCRED`` gives the peer's pid, uid and primary gid; ``SO_PEERGROUPS`` (Linux 4.13+) its
supplementary groups. Both come from the socket itself, never from ``/proc/PID``: a service
with ``ProtectProc=invisible`` cannot see other users' processes there, and a pid read there
may since belong to another process. Where the kernel cannot tell the groups (an older kernel,
an architecture whose option number differs, more groups than fit the buffer Python allows),
``groups`` is None and the caller decides with what it knows (the socket file's mode).
``allowed`` is who the control socket lets in by them; ``describe`` names a peer for people.
"""

from __future__ import annotations

import errno
import platform
import pwd
import socket
import struct
from dataclasses import dataclass

__all__ = ["Peer", "peer_of"]

_CRED = struct.Struct("3i")
# asm-generic's number; parisc and sparc number it differently and are left to the fallback.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEERGROUPS_KNOWN = not platform.machine().startswith(("parisc", "sparc"))
_MAX_BUFFER = 1024  # CPython's limit on getsockopt's buffer: 256 groups


@dataclass(frozen=True, slots=True)
class Peer:
    """The peer process's credentials; ``groups`` None when the kernel could not say."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None

    def in_group(self, gid: int) -> bool | None:
        """Whether ``gid`` is the peer's primary or a supplementary group; None if unknown."""
        if self.gid == gid:
            return True
        return None if self.groups is None else gid in self.groups


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process connected to ``sock`` (an AF_UNIX stream socket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return Peer(pid, uid, gid, _groups(sock))


def _groups(sock: socket.socket) -> frozenset[int] | None:
    if not _PEERGROUPS_KNOWN:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _MAX_BUFFER)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.ERANGE, errno.EINVAL):
            return None
        raise
    count = len(raw) // 4
    return frozenset(struct.unpack(f"{count}I", raw[: count * 4]))


def allowed(who: Peer, daemon_uid: int, socket_gid: int, socket_mode: int | None) -> bool:
    """Root, the daemon's own user and members of the socket's group may use the socket.

    Membership is the peer's primary group or its supplementary groups as the socket reports
    them (SO_PEERGROUPS). Where the kernel cannot tell the groups, the file's mode has
    decided already: a socket that grants others nothing could only be connected to by its
    owner, its group, or a process allowed to override file permissions."""
    if who.uid in (0, daemon_uid):
        return True
    member = who.in_group(socket_gid)
    if member is None:
        return socket_mode is not None and socket_mode & 0o007 == 0
    return member


def describe(pid: int, uid: int) -> str:
    """A process as a person reads it, and as overrides and the action log record it:
    ``alice (uid 1001, pid 4599)``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return f"{name} (uid {uid}, pid {pid})"
