"""Renames told apart from a server gone and another new; what state_dir remembers of a
server dropped by `forget` with the daemon down; the recorded set kept with its addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbhealthd.model import AdminState, Member, OpState, Override, OverrideKind
from lbhealthd.server_set import Rename, address_of, renames
from lbhealthd.store import OwnedEntry, Store
from lbhealthd.store.memory import forget, record_set, recorded_sets
from lbhealthd.testing import sid


@pytest.mark.parametrize(
    ("gone", "new", "expected"),
    [
        (
            {"s3": "10.0.0.3:80"},
            {"s3b": "10.0.0.3:80"},
            [Rename("api", "s3", "s3b", "10.0.0.3:80")],
        ),
        ({"s3": "10.0.0.3:80"}, {"s9": "10.0.0.9:80"}, []),
        ({"s3": None}, {"s3b": "10.0.0.3:80"}, [Rename("api", "s3", "s3b", None)]),
        ({"s3": None, "s4": None}, {"a": "10.0.0.3:80", "b": "10.0.0.4:80"}, []),
        (
            {"s3": "10.0.0.3:80", "s4": "10.0.0.4:80"},
            {"b": "10.0.0.4:80", "a": "10.0.0.3:80", "c": "10.0.0.5:80"},
            [Rename("api", "s3", "a", "10.0.0.3:80"), Rename("api", "s4", "b", "10.0.0.4:80")],
        ),
        ({"s3": "10.0.0.3:80"}, {"a": "10.0.0.3:80", "b": "10.0.0.3:80"}, []),
        ({}, {"s6": "10.0.0.6:80"}, []),
        ({"s3": "10.0.0.3:80"}, {}, []),
    ],
    ids=[
        "same-address",
        "other-address",
        "one-and-one-unknown-address",
        "two-unknown-addresses",
        "two-by-address-one-new",
        "two-at-one-address",
        "only-new",
        "only-gone",
    ],
)
def test_renames(gone: dict[str, str | None], new: dict[str, str], expected: list[Rename]) -> None:
    """A rename is a gone server and a new one at its address; with the old address unknown,
    only a lone pair is taken for one (and said to be a guess)."""
    assert renames("api", gone, new) == expected


def test_a_rename_says_how_it_was_told() -> None:
    """The message names both servers and the address, or says the pairing is a guess."""
    assert Rename("api", "s3", "s3b", "10.0.0.3:80").message() == (
        "api/s3 -> api/s3b (same address 10.0.0.3:80)"
    )
    guess = Rename("api", "s3", "s3b", None)
    assert not guess.sure and "old address is not known" in guess.message()


def test_address_of_writes_ipv6_in_brackets() -> None:
    """Addresses are written as haproxy.cfg writes them, an IPv6 one in brackets."""
    v4 = Member(sid("api/s1"), "10.0.0.1", 80, AdminState.READY, OpState.UP, 1, 1)
    v6 = Member(sid("api/s2"), "::1", 8080, AdminState.READY, OpState.UP, 1, 1)
    assert (address_of(v4), address_of(v6)) == ("10.0.0.1:80", "[::1]:8080")


def test_forget_drops_every_memory_of_one_server(tmp_path: Path) -> None:
    """forget drops the server's override, ownership, engine memory, pending change and
    place in the recorded set, and nothing of its neighbours."""
    store = Store(tmp_path / "state")
    s3, s4 = sid("api/s3"), sid("api/s4")
    for s in (s3, s4):
        store.put_override(Override(s, OverrideKind.DRAIN, "disk", "alice", 1.0))
    store.save_owned({s: OwnedEntry(s, AdminState.DRAIN, 1.0, "fall") for s in (s3, s4)})
    store.save_blobs(
        {
            "engine": {"servers": {"api/s3": {"phase": "drained"}, "api/s4": {"phase": "x"}}},
            "pending": {"servers": {"api/s3": {"to": "drain"}}},
        }
    )
    record_set(store, "api", {"s3": "10.0.0.3:80", "s4": "10.0.0.4:80"})

    dropped = forget(store, s3)
    assert dropped == [
        "its drain override by alice",
        "what lbhealthd had set of it (owned.json)",
        "the engine's memory of it",
        "a change recorded but never confirmed",
        "its place in the recorded server set of api",
    ]
    assert set(store.load_overrides()) == {s4} and set(store.load_owned()) == {s4}
    assert store.load_blob("engine") == {"servers": {"api/s4": {"phase": "x"}}}
    assert store.load_blob("pending") == {"servers": {}}
    assert recorded_sets(store.load_blob("discovered")) == (
        {"api": ["s4"]},
        {"api": {"s4": "10.0.0.4:80"}},
    )
    assert forget(store, s3) == []


def test_record_set_returns_the_set_before(tmp_path: Path) -> None:
    """Recording a set returns the one it replaces (None the first time); a set recorded
    without addresses (before they were kept) reads back with none."""
    store = Store(tmp_path / "state")
    store.save_blob("discovered", {"pools": {"api": ["s1", "s2"]}})
    assert recorded_sets(store.load_blob("discovered")) == ({"api": ["s1", "s2"]}, {})
    assert record_set(store, "api", {"s1": "a:1", "s2b": "a:2"}) == ["s1", "s2"]
    assert record_set(store, "web", {"w1": "b:1"}) is None
    pools, addresses = recorded_sets(store.load_blob("discovered"))
    assert pools == {"api": ["s1", "s2b"], "web": ["w1"]}
    assert addresses["api"] == {"s1": "a:1", "s2b": "a:2"}
