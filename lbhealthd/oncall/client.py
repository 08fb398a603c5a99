"""The on-call commands' side of the control socket: one HTTP request to the running daemon.

Before a word of the answer is believed, the process at the other end is checked by the
credentials the socket gives (SO_PEERCRED): it must run as root, as this command's own user,
or as the owner of ``daemon.state_dir`` (the daemon's user). Anyone else answering there got
the socket's name some other way (a directory others may write) and could report a drain that
never happened: the command stops with :class:`UntrustedDaemon` and never takes the direct
path, since a daemon may well be running.

"No daemon" (the file missing, nothing listening) is None: the caller may then act directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import pwd
import socket
from typing import Any

from lbhealthd.config import Config
from lbhealthd.errors import ControlRefused, UntrustedDaemon
from lbhealthd.peercred import Peer, peer_of

__all__ = ["TIMEOUT", "call_daemon", "trusted_uids"]

TIMEOUT = 15.0  # seconds for each step of the exchange; a drain waits for one round (≤ 10 s)


def trusted_uids(state_dir: str) -> frozenset[int]:
    """Root, this command's user, and the owner of ``state_dir`` (when it exists)."""
    uids = {0, os.geteuid()}
    with contextlib.suppress(OSError):  # no state_dir: no daemon of it ran as anyone else
        uids.add(os.stat(state_dir).st_uid)
    return frozenset(uids)


async def call_daemon(
    config: Config, method: str, route: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, JSON) from the daemon, or None when no daemon listens on the socket."""
    return await asyncio.to_thread(_call, config, method, route, body)


def _call(
    config: Config, method: str, route: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]] | None:
    path = config.daemon.control_socket
    conn = _Connection(path, trusted_uids(config.daemon.state_dir), config.daemon.state_dir)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, route, body=payload, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ControlRefused(
                f"permission denied on the control socket {path}: run as its owner or a "
                "member of its group"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            return None
        raise
    finally:
        conn.close()
    try:
        return resp.status, dict(json.loads(text))
    except (ValueError, TypeError):
        return resp.status, {"error": f"the daemon answered {resp.status}: {text[:200]}"}


class _Connection(http.client.HTTPConnection):
    """HTTP over the control socket, to a peer checked as soon as it is connected."""

    def __init__(self, path: str, trusted: frozenset[int], state_dir: str) -> None:
        super().__init__("lbhealthd", timeout=TIMEOUT)
        self.socket_path = path
        self.trusted = trusted
        self.state_dir = state_dir

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            _check(peer_of(sock), self.trusted, self.socket_path, self.state_dir)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _check(peer: Peer, trusted: frozenset[int], path: str, state_dir: str) -> None:
    if peer.uid in trusted:
        return
    try:
        name = f"{pwd.getpwuid(peer.uid).pw_name} (uid {peer.uid}, pid {peer.pid})"
    except KeyError:
        name = f"uid {peer.uid} (pid {peer.pid})"
    raise UntrustedDaemon(
        f"{path} is served by {name}, which is not trusted: lbhealthd trusts only root, your "
        f"own user and the owner of {state_dir}. Someone may have replaced the socket; nothing "
        "was sent to it. Check the socket's directory, and whether lbhealthd runs"
    )
