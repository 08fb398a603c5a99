"""What the ELBv2 driver knows of a target group, and how a target's health becomes a Member.

    healthy, unavailable (checks off)   -> UP          initial  -> STARTING
    draining                            -> STOPPING    unhealthy, unhealthy.draining, unused
                                                       and anything else -> DOWN

There are no per-target weights: every member has weight 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lbhealthd.model import AdminState, Member, OpState, ServerId

if TYPE_CHECKING:
    from types_aiobotocore_elbv2.type_defs import TargetGroupTypeDef

_OP = {
    "healthy": OpState.UP,
    "unavailable": OpState.UP,  # health checks disabled: the LB routes to the target
    "initial": OpState.STARTING,
    "draining": OpState.STOPPING,
}


@dataclass(frozen=True, slots=True)
class TargetGroup:
    """What the driver knows of a pool's target group (read once, then cached)."""

    pool: str
    ref: str  # as configured: name or ARN
    arn: str
    name: str
    target_type: str
    port: int | None
    health_checks: bool
    deregistration_delay: int  # seconds, deregistration_delay.timeout_seconds
    slow_start: int  # seconds, slow_start.duration_seconds (0 = off)


def described_group(
    pool: str, ref: str, description: TargetGroupTypeDef, attributes: Mapping[str, str]
) -> TargetGroup:
    """The TargetGroup of ``pool`` that DescribeTargetGroups and its attributes describe."""
    return TargetGroup(
        pool=pool,
        ref=ref,
        arn=description["TargetGroupArn"],
        name=description.get("TargetGroupName", ref),
        target_type=description.get("TargetType", "instance"),
        port=description.get("Port"),
        health_checks=description.get("HealthCheckEnabled", True),
        deregistration_delay=_int(attributes.get("deregistration_delay.timeout_seconds"), 300),
        slow_start=_int(attributes.get("slow_start.duration_seconds"), 0),
    )


def op_state(health_state: str) -> OpState:
    """The operational state of a target in ``DescribeTargetHealth``'s ``State``."""
    return _OP.get(health_state, OpState.DOWN)


def member(
    sid: ServerId,
    address: str,
    port: int | None,
    admin: AdminState,
    op: OpState,
    group: TargetGroup,
    status: str,
) -> Member:
    """The Member for one target of ``group``."""
    return Member(
        id=sid,
        address=address,
        port=port or 0,
        admin=admin,
        op=op,
        weight=1,
        initial_weight=1,
        check_status=status,
        checks_enabled=group.health_checks,
    )


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default
