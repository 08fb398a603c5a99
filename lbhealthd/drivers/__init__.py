"""The load-balancer driver interface. One module per load balancer implements it.

Drivers raise only lbhealthd's own errors: ``Unavailable`` (transient, worth a retry) or
``Rejected`` (the LB refused; terminal). They validate every name before it leaves the process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from lbhealthd.errors import ConfigError, Problem
from lbhealthd.extras import require
from lbhealthd.model import AdminState, PoolSnapshot, ServerId

if TYPE_CHECKING:
    from lbhealthd.config import Config
    from lbhealthd.drivers.elbv2.deregistered import Keeper


#: The state_dir blob in which a driver keeps what it must remember (see ``make_driver``).
STATE_BLOB = "deregistered_targets"


class Driver(Protocol):
    """List a pool's members with their state, weight and counters; change state and weight."""

    #: How many servers' changes the reconciler may have in flight at once (their commands
    #: then share the driver's connection: HAProxy's runtime API answers them in order).
    max_in_flight: int

    async def snapshot(self, pool: str) -> PoolSnapshot:
        """Read every member of ``pool`` from the LB (all endpoints of an HA pair)."""
        ...

    async def set_state(self, server: ServerId, state: AdminState) -> None:
        """Set the admin state of one server on every endpoint."""
        ...

    async def set_weight(self, server: ServerId, weight: int) -> None:
        """Set the weight of one server on every endpoint."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def make_driver(
    config: Config, *, state: Keeper | None = None, sockets: list[str] | None = None
) -> Driver:
    """The driver for the config's load balancer. ``state`` is where a driver keeps what it
    must remember across restarts (the ELBv2 driver: the targets it deregistered), normally
    a blob of state_dir. ``sockets`` narrows a HAProxy pair to some of its sockets (the audit
    compares them one by one). ``MissingExtra`` when the driver's extra is not installed."""
    lb = config.load_balancer
    if lb.type == "haproxy":
        from lbhealthd.drivers.haproxy.driver import HAProxyDriver

        return HAProxyDriver(
            sockets or lb.haproxy.sockets,
            lb.haproxy.timeout,
            stats_every=lb.haproxy.stats_interval,
        )
    if lb.type == "aws_elbv2":
        require("aws", "load_balancer.type aws_elbv2")
        from lbhealthd.drivers.elbv2 import ELBv2Driver

        aws = lb.aws_elbv2
        if aws is None:  # the config refuses this; kept for callers that build configs by hand
            raise ConfigError(
                "config", [Problem("load_balancer.aws_elbv2", "required for type aws_elbv2")]
            )
        return ELBv2Driver(
            aws.region,
            aws.endpoint_url,
            aws.timeout,
            aws.target_groups,
            resolve_addresses=aws.resolve_addresses,
            state_file=os.path.join(config.daemon.state_dir, "elbv2_deregistered.json"),
            keeper=state,
        )
    raise ConfigError("config", [Problem("load_balancer.type", f"{lb.type!r} is not supported")])
