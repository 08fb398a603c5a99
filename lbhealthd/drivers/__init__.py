"""The load-balancer driver interface. One module per load balancer implements it.

Drivers raise only lbhealthd's own errors: ``Unavailable`` (transient, worth a retry) or
``Rejected`` (the LB refused; terminal). They validate every name before it leaves the process.
"""

from __future__ import annotations

from typing import Protocol

from lbhealthd.model import AdminState, PoolSnapshot, ServerId


class Driver(Protocol):
    """List a pool's members with their state, weight and counters; change state and weight."""

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


def make_driver(lb_type: str, *, sockets: list[str], timeout: float) -> Driver:
    """The driver for a load balancer type from the config."""
    if lb_type == "haproxy":
        from lbhealthd.drivers.haproxy import HAProxyDriver

        return HAProxyDriver(sockets, timeout)
    raise ValueError(f"load_balancer.type {lb_type!r} is not supported yet")
