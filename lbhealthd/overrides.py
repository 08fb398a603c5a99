"""On-call actions shared by the control API (daemon running) and the direct path (daemon
down): validating the server, checking the pool's caps, and describing a refusal."""

from __future__ import annotations

from collections.abc import Sequence

from lbhealthd.config import Config
from lbhealthd.engine import governor
from lbhealthd.errors import CapRefused, UnknownServer
from lbhealthd.model import AdminState, Member, OpState, ServerId


def in_rotation(member: Member) -> bool:
    """Whether the LB sends new traffic to this server."""
    return member.admin is AdminState.READY and member.op not in (OpState.DOWN, OpState.STOPPING)


def find_member(config: Config, sid: ServerId, members: Sequence[Member]) -> Member:
    """The member for ``sid``; UnknownServer listing the pool's servers if there is none."""
    names = [p.name for p in config.pools]
    if sid.pool not in names:
        raise UnknownServer(f"pool {sid.pool!r} is not in the config (pools: {', '.join(names)})")
    for member in members:
        if member.id == sid:
            return member
    listed = ", ".join(sorted(m.id.server for m in members)) or "none"
    raise UnknownServer(f"no server {sid.server!r} in pool {sid.pool} (servers: {listed})")


def check_caps(config: Config, sid: ServerId, members: Sequence[Member]) -> None:
    """Raise CapRefused, naming the cap, if taking ``sid`` out breaks the pool's caps."""
    settings = config.engine_settings().pools[sid.pool]
    others_out = sum(1 for m in members if m.id != sid and not in_rotation(m))
    size = len(members)
    budget = governor.budget(size, others_out, settings)
    rule = budget.check(settings)
    if rule is None:
        return
    if rule.value == "max_drained":
        raise CapRefused(
            f"refused: taking {sid} out would put {others_out + 1} of {size} servers out of "
            f"rotation, above max_drained {settings.max_drained:.0%} ({budget.max_out} "
            f"server(s)); use --force to do it anyway"
        )
    raise CapRefused(
        f"refused: taking {sid} out would leave {size - others_out - 1} of {size} servers in "
        f"rotation, below min_in_service {settings.min_in_service}; use --force to do it anyway"
    )
