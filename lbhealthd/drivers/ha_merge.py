"""How the endpoints of an HA pair read as one load balancer.

Every driver that talks to several endpoints (``HAProxyDriver``, ``MemoryDriver``) merges their
answers here, so the reconciler sees an HA pair the same way whichever driver it runs on:

- ``merge_members``: the first answering endpoint's view of a pool, with ``consistent=False`` on
  a server whose admin state or weight differs between the endpoints (or that one of them
  lacks), and on every server while an endpoint did not answer; and the servers that some
  answering endpoints list and others do not (the pair disagrees on the pool's membership).
- ``combined_error``: one error for the endpoints that failed a call.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from lbhealthd.errors import DriverError
from lbhealthd.model import Member


def merge_members(
    per_endpoint: Iterable[Sequence[Member] | None],
) -> tuple[list[Member], frozenset[str]]:
    """One view of a pool from each endpoint's (None for an endpoint that did not answer): the
    first answering endpoint's servers in its order, then those only a later one lists; and
    the names of the servers not every answering endpoint lists."""
    views = list(per_endpoint)
    if len(views) == 1 and views[0] is not None:
        # One endpoint, the common case: its view as it is (each member kept as it was read).
        return [_with_consistent(m, True) for m in views[0]], frozenset()
    answered = [{m.id.server: m for m in ms} for ms in views if ms is not None]
    everyone = len(answered) == len(views)
    partial: frozenset[str] = frozenset()
    if len(answered) > 1:
        first, *others = (set(view) for view in answered)
        partial = frozenset(first.union(*others) - first.intersection(*others))
    merged: dict[str, Member] = {}
    for view in answered:
        for name, member in view.items():
            if name in merged:
                continue
            same = all(
                name in other
                and other[name].admin == member.admin
                and other[name].weight == member.weight
                for other in answered
            )
            merged[name] = _with_consistent(member, everyone and same)
    return list(merged.values()), partial


def _with_consistent(member: Member, consistent: bool) -> Member:
    # Most members are unchanged: keeping the object spares a copy per server on large pools.
    return member if member.consistent == consistent else replace(member, consistent=consistent)


def combined_error(errors: list[DriverError], total: int, prefer: type[DriverError]) -> DriverError:
    """One error for several endpoints: ``prefer``'s class if any has it, else the first's."""
    first = next((e for e in errors if isinstance(e, prefer)), errors[0])
    if len(errors) == 1 and total == 1:
        return first
    failed = "; ".join(str(e) for e in errors)
    combined = type(first)(f"{len(errors)} of {total} endpoints failed: {failed}")
    combined.endpoint = ",".join(e.endpoint for e in errors)
    combined.__cause__ = first
    return combined
