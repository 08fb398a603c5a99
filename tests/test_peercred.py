"""Peer credentials from a unix socket, and who the control socket lets in by them."""

from __future__ import annotations

import os
import socket

import pytest

from lbhealthd.peercred import Peer, allowed, peer_of

DAEMON, GROUP, OTHER = 990, 990, 1001


def test_peer_of_a_socket_is_this_process_with_its_groups() -> None:
    """Across a socketpair the peer is this process: its pid, uid, gid, and (where the kernel
    says) its supplementary groups."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        who = peer_of(a)
    assert (who.pid, who.uid, who.gid) == (os.getpid(), os.geteuid(), os.getegid())
    if who.groups is not None:
        assert who.groups == frozenset(os.getgroups())


@pytest.mark.parametrize(
    ("peer", "mode", "expected"),
    [
        (Peer(1, 0, 0, frozenset()), 0o666, True),
        (Peer(1, DAEMON, DAEMON, frozenset()), 0o666, True),
        (Peer(1, OTHER, GROUP, frozenset()), 0o666, True),
        (Peer(1, OTHER, OTHER, frozenset({5, GROUP})), 0o666, True),
        (Peer(1, OTHER, OTHER, frozenset({5})), 0o660, False),
        (Peer(1, OTHER, OTHER, None), 0o660, True),
        (Peer(1, OTHER, OTHER, None), 0o666, False),
        (Peer(1, OTHER, OTHER, None), None, False),
    ],
    ids=[
        "root",
        "the daemon's user",
        "primary group",
        "supplementary group",
        "not a member",
        "groups unknown, the mode kept others out",
        "groups unknown, the mode let others in",
        "groups unknown, the socket file gone",
    ],
)
def test_who_may_use_the_control_socket(peer: Peer, mode: int | None, expected: bool) -> None:
    """Root, the daemon's user and the socket group's members; with the groups unknown, only
    when the socket's mode has kept everyone else from connecting."""
    assert allowed(peer, DAEMON, GROUP, mode) is expected
