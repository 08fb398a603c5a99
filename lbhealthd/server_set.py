"""A pool's server set against another: which server went, which came, and which of them are
one server renamed.

A server renamed in HAProxy is, to a comparison of names, one server gone and one new: the
audit reports both (``missing_server``, ``unexpected_server``). Told apart here: a gone server
and a new one at the same address are a rename; when the gone one's address is not known (a
set recorded before addresses were), a pool with exactly one gone and one new server is a
likely rename. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lbhealthd.model import Member

__all__ = ["Rename", "address_of", "renames"]


def address_of(member: Member) -> str:
    """The member's address as haproxy.cfg writes it: ``10.0.0.3:8080``, ``[::1]:80``."""
    host = f"[{member.address}]" if ":" in member.address else member.address
    return f"{host}:{member.port}"


@dataclass(frozen=True, slots=True)
class Rename:
    """``old`` is gone from ``pool`` and ``new`` came; ``address`` is the address both have,
    None when the pairing is a guess (one gone, one new, the old address unknown)."""

    pool: str
    old: str
    new: str
    address: str | None

    @property
    def sure(self) -> bool:
        return self.address is not None

    def message(self) -> str:
        if self.address is not None:
            how = f"same address {self.address}"
        else:
            how = "the only server gone and the only one new; the old address is not known"
        return f"{self.pool}/{self.old} -> {self.pool}/{self.new} ({how})"

    def as_dict(self) -> dict[str, str | bool | None]:
        return {
            "pool": self.pool,
            "old": self.old,
            "new": self.new,
            "address": self.address,
            "sure": self.sure,
        }


def renames(pool: str, gone: Mapping[str, str | None], new: Mapping[str, str]) -> list[Rename]:
    """The renames among ``gone`` servers (name -> address, None when unknown) and ``new``
    ones (name -> address): by equal address; else one gone and one new are a likely one."""
    found: list[Rename] = []
    by_address: dict[str, list[str]] = {}
    for name, at in sorted(new.items()):
        by_address.setdefault(at, []).append(name)
    left_gone = dict(gone)
    left_new = dict(new)
    for name, was in sorted(gone.items()):
        candidates = by_address.get(was or "", [])
        if was is not None and len(candidates) == 1 and candidates[0] in left_new:
            found.append(Rename(pool, name, candidates[0], was))
            del left_gone[name]
            del left_new[candidates[0]]
    if len(left_gone) == 1 and len(left_new) == 1:
        [(old, was)] = left_gone.items()
        [(name, _)] = left_new.items()
        if was is None:
            found.append(Rename(pool, old, name, None))
    return found
