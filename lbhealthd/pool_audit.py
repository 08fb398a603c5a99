"""What the config expects of a pool, and the live pool audited against it.

Shared by the daemon's audit (every change, and on a timer) and `lbhealthd audit`: both must
find the same differences.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from lbhealthd.config import PoolConfig
from lbhealthd.model import Member, ServerId
from lbhealthd.monitors.audit import Expectation, Finding, audit_pool, expectation_from

__all__ = ["expectation", "expected_weight", "intended_weight", "live_findings", "misweighted"]


def expected_weight(pool: PoolConfig, server: str) -> int | None:
    """The weight ``expected_weights`` gives ``server`` (its own, else ``default``), or None."""
    return pool.expected_weights.get(server, pool.expected_weights.get("default"))


def intended_weight(pool: PoolConfig, member: Member) -> float:
    """The weight the operator intends: the audit's expected weight when one is configured
    (a misweighted pool is then seen as skewed), else the LB's current weight."""
    expected = expected_weight(pool, member.id.server)
    return float(expected) if expected is not None else float(member.weight)


def misweighted(
    pool: PoolConfig, members: Mapping[ServerId, Member], ramping: Collection[ServerId] = ()
) -> dict[str, tuple[int, int]]:
    """By server, its live weight and its expected one where they differ (a server lbhealthd
    ramps up in slow start is on its way there: not counted)."""
    if not pool.expected_weights:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for sid, member in members.items():
        expected = expected_weight(pool, sid.server)
        if expected is not None and member.weight != expected and sid not in ramping:
            out[sid.server] = (member.weight, expected)
    return out


def expectation(pool: PoolConfig, recorded: Collection[str] | None) -> Expectation:
    """Expected servers: the config's list, else the set recorded at the first run."""
    servers = pool.servers if pool.servers is not None else recorded
    return expectation_from(pool.name, servers, pool.expected_weights)


def live_findings(
    pool: PoolConfig,
    members: Mapping[ServerId, Member],
    owned: Collection[ServerId],
    recorded: Collection[str] | None,
) -> list[Finding]:
    checks = {sid: m.checks_enabled for sid, m in members.items() if m.checks_enabled is not None}
    return audit_pool(list(members.values()), expectation(pool, recorded), owned, checks=checks)
