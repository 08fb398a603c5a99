"""The on-call commands' side of the control socket: one HTTP request to the running daemon.

Before a word of the answer is believed, the process at the other end is checked by the
credentials the socket gives (SO_PEERCRED): it must run as root, as this command's own user,
or as the owner of ``daemon.state_dir`` (the daemon's user). Anyone else answering there got
the socket's name some other way (a directory others may write) and could report a drain that
never happened: the command stops with :class:`UntrustedDaemon` and never takes the direct
path, since a daemon may well be running.

"No daemon" (the file missing, nothing listening) is None: the caller may then act directly.
A daemon that is there but does not answer (its listen queue full, no answer within
``TIMEOUT``, the connection closed without one) is :class:`DaemonNotAnswering`, also without
the direct path: two writers of the LB would undo each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import socket
import time
from typing import Any

from lbhealthd.config import Config
from lbhealthd.config.lenient import Reach
from lbhealthd.errors import ControlRefused, DaemonNotAnswering, UntrustedDaemon
from lbhealthd.peercred import Peer, describe, peer_of

__all__ = ["TIMEOUT", "call_daemon", "trusted_uids"]

TIMEOUT = 15.0  # seconds for each step of the exchange; a drain waits for one round (≤ 10 s)
QUEUE_FULL_RETRY = 0.05  # seconds between two connects while the daemon's queue is full


def trusted_uids(state_dir: str) -> frozenset[int]:
    """Root, this command's user, and the owner of ``state_dir`` (when it exists)."""
    uids = {0, os.geteuid()}
    with contextlib.suppress(OSError):  # no state_dir: no daemon of it ran as anyone else
        uids.add(os.stat(state_dir).st_uid)
    return frozenset(uids)


async def call_daemon(
    config: Config | Reach, method: str, route: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, JSON) from the daemon, or None when no daemon listens on the socket.
    A :class:`Reach` is enough: a config file refused on disk still names the socket."""
    reach = config if isinstance(config, Reach) else Reach.of(config)
    return await asyncio.to_thread(_call, reach, method, route, body)


def _call(
    reach: Reach, method: str, route: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]] | None:
    path = reach.control_socket
    conn = _Connection(path, trusted_uids(reach.state_dir), reach.state_dir)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, route, body=payload, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
    except TimeoutError:
        raise _not_answering(path, method, f"did not answer within {TIMEOUT:g}s") from None
    except (http.client.HTTPException, ConnectionResetError, BrokenPipeError):
        raise _not_answering(path, method, "closed the connection without an answer") from None
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
        deadline = time.monotonic() + TIMEOUT
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(TIMEOUT)
                sock.connect(self.socket_path)
                break
            except BlockingIOError:  # the listen queue is full: the daemon is flooded or stuck
                sock.close()
                if time.monotonic() >= deadline:
                    raise _not_answering(
                        self.socket_path, "", f"is not accepting connections ({TIMEOUT:g}s)"
                    ) from None
                time.sleep(QUEUE_FULL_RETRY)
            except BaseException:
                sock.close()
                raise
        try:
            _check(peer_of(sock), self.trusted, self.socket_path, self.state_dir)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _not_answering(path: str, method: str, what: str) -> DaemonNotAnswering:
    sent = (
        " A change asked for may or may not have been recorded: check with `lbhealthd status`."
        if method == "POST"
        else " Retry, or check with `lbhealthd status` once it answers."
    )
    return DaemonNotAnswering(
        f"the daemon on {path} {what}: it runs but is flooded with connections or stuck "
        f"(see its log and /healthz). Nothing was done through the direct path.{sent}"
    )


def _check(peer: Peer, trusted: frozenset[int], path: str, state_dir: str) -> None:
    if peer.uid in trusted:
        return
    name = describe(peer.pid, peer.uid)
    raise UntrustedDaemon(
        f"{path} is served by {name}, which is not trusted: lbhealthd trusts only root, your "
        f"own user and the owner of {state_dir}. Someone may have replaced the socket; nothing "
        "was sent to it. Check the socket's directory, and whether lbhealthd runs"
    )
