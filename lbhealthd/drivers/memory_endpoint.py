"""One endpoint of the in-memory load balancer (``lbhealthd.drivers.memory``): one simulated
HAProxy process.

A ``MemoryServer`` is a server as the configuration declares it. An endpoint holds, per pool, a
``LiveServer`` for each: the runtime state (admin state, weight, operational state, counters)
that lbhealthd and operators change. ``boot`` rebuilds it all from the configuration, as a
restarted HAProxy does, under a new epoch. ``member_view`` is one server as the endpoint shows
it in a read. ``Command`` and ``HandChange`` are what the driver records of the changes that
reach it, for a test to look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lbhealthd.model import AdminState, Member, OpState, ServerId

Op = Literal["snapshot", "set_state", "set_weight"]
Who = Literal["operator", "agent"]


@dataclass(frozen=True, slots=True)
class Command:
    """A set command that reached the LB: which endpoints it landed on."""

    server: ServerId
    what: Literal["state", "weight"]
    value: AdminState | int
    endpoints: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HandChange:
    """A change made by someone other than lbhealthd (an operator or an agent-check)."""

    server: ServerId
    who: Who
    admin: AdminState | None
    weight: int | None
    endpoints: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MemoryServer:
    """A server as the LB's configuration declares it (what a restart brings back)."""

    name: str
    address: str = "127.0.0.1"
    port: int = 8000
    weight: int = 100  # the configured (initial) weight
    admin: AdminState = AdminState.READY  # the configured admin state
    has_agent: bool = False
    checks_enabled: bool | None = None


@dataclass(slots=True)
class LiveServer:
    """One server's runtime state on one endpoint."""

    spec: MemoryServer
    admin: AdminState
    weight: int
    op: OpState = OpState.UP
    sessions: int = 0
    queue: int = 0
    session_rate: int = 0
    sessions_total: int = 0
    check_status: str = ""


@dataclass(slots=True)
class MemoryEndpoint:
    """One process: its servers by pool and name, and whether it runs."""

    index: int
    pools: dict[str, dict[str, LiveServer]] = field(default_factory=dict)
    generation: int = 0
    running: bool = True
    failing: int | None = 0  # set commands still to fail here; None = every one
    hidden: dict[tuple[str, str], int] = field(default_factory=dict)  # reads still to miss

    def listed(self, pool: str) -> list[LiveServer]:
        """The servers of ``pool`` this read lists: all but those hidden from it."""
        servers = self.pools[pool]
        if not self.hidden:
            return list(servers.values())
        shown = []
        for name, live in servers.items():
            left = self.hidden.get((pool, name), 0)
            if left:
                if left == 1:
                    del self.hidden[(pool, name)]
                else:
                    self.hidden[(pool, name)] = left - 1
                continue
            shown.append(live)
        return shown

    @property
    def name(self) -> str:
        return f"memory:{self.index}"

    @property
    def epoch(self) -> str:
        return f"mem{self.index}.{self.generation}" if self.running else "-"

    def boot(self, config: Mapping[str, Sequence[MemoryServer]]) -> None:
        """Start afresh from the configuration: every server as configured, a new epoch."""
        self.generation += 1
        self.hidden = {}
        self.pools = {
            pool: {s.name: LiveServer(s, admin=s.admin, weight=s.weight) for s in servers}
            for pool, servers in config.items()
        }


def member_view(pool: str, live: LiveServer) -> Member:
    """The server ``live`` of ``pool`` as its endpoint shows it."""
    spec = live.spec
    return Member(
        id=ServerId(pool, spec.name),
        address=spec.address,
        port=spec.port,
        admin=live.admin,
        op=live.op,
        weight=live.weight,
        initial_weight=spec.weight,
        sessions=live.sessions,
        queue=live.queue,
        session_rate=live.session_rate,
        sessions_total=live.sessions_total,
        check_status=live.check_status,
        has_agent=spec.has_agent,
        checks_enabled=spec.checks_enabled,
    )
