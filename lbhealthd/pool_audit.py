"""What the config expects of a pool, and the live pool audited against it.

Shared by the daemon's audit (every change, and on a timer) and `lbhealthd audit`: both must
find the same differences.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from lbhealthd.config import PoolConfig
from lbhealthd.model import Member, ServerId
from lbhealthd.monitors.audit import Expectation, Finding, audit_pool, expectation_from

__all__ = ["expectation", "intended_weight", "live_findings"]


def intended_weight(pool: PoolConfig, member: Member) -> float:
    """The weight the operator intends: the audit's expected weight when one is configured
    (a misweighted pool is then seen as skewed), else the LB's current weight."""
    expected = pool.expected_weights.get(member.id.server, pool.expected_weights.get("default"))
    return float(expected) if expected is not None else float(member.weight)


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
