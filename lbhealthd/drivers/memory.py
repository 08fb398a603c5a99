"""An in-memory load balancer for tests: the Driver protocol over plain dicts, with knobs for
every way a real LB misbehaves.

Theory of operation. The driver holds the *configuration* of one or more pools (a
``MemoryServer`` per server: name, address, port, configured weight and admin state, whether an
agent-check runs) and, per *endpoint*, the *runtime* state of every server (admin, op, weight,
counters). One endpoint is one HAProxy process; an HA pair is two endpoints holding the same
servers. What lbhealthd changes lives in the runtime state only, as in HAProxy: ``restart()``
rebuilds it from the configuration (admin as configured, weights back to their initial value)
and changes the endpoint's epoch. One endpoint's state is ``lbhealthd.drivers.memory_endpoint``.

It behaves as ``HAProxyDriver`` does wherever the reconciler can tell:

- ``snapshot`` reads every endpoint and merges them with the code ``HAProxyDriver`` uses
  (``lbhealthd.drivers.ha_merge``): the first answering endpoint's view, with
  ``consistent=False`` on a server whose admin state or weight differs between endpoints, or on
  every server while an endpoint does not answer; ``partial`` names the servers some answering
  endpoints do not list. The epoch is the endpoints' epochs joined with ``,`` (``-`` for one
  that did not answer). It raises only when no endpoint answered. Its counters are read afresh
  every time, and a server that reads the same as before is the same ``Member``.
- ``set_state`` and ``set_weight`` go to every endpoint; the change stays where it landed and
  the call fails if any endpoint failed (``Unavailable`` preferred over ``Rejected``).
- Names are checked with ``check_name`` before anything else (``InvalidName``); a state that is
  not an ``AdminState`` or a weight outside 0..256 is a ``ValueError`` (a caller's bug, as in
  ``HAProxyDriver``). An unknown pool or server is ``Rejected`` with HAProxy's words ("No such
  backend.", "No such server."). Nothing else is ever raised.

Knobs (all deterministic; nothing here sleeps or reads a clock):

- ``unavailable(error)``: every call raises ``Unavailable(error)`` until ``unavailable(None)``.
- ``stop_endpoint(i)`` / ``start_endpoint(i)``: the process behind endpoint ``i`` is down (reads
  and writes fail on it), then starts again with its runtime state lost (a new epoch).
- ``fail_endpoint(i, calls)``: the next ``calls`` set commands (every one when None, until
  ``heal_endpoint(i)``) fail on endpoint ``i`` alone while the others apply them: a change
  half-applied on an HA pair. Reads still answer.
- ``hold(op, after=...)``: calls wait at a gate until ``release()``, before they act or (with
  ``after=True``) after they acted, so the answer is what is late; ``held(n)`` waits until ``n``
  calls are waiting. A test stands in for a slow or hung LB, or for a daemon killed mid-command
  (cancel the waiting task), without real time.
- ``restart(i)``: endpoint ``i`` (every endpoint when None) loses its runtime state.
- ``del_server(name, endpoint=)``: the server is deleted from endpoint ``endpoint`` (every one
  when None), as HAProxy's ``del server`` does: reads no longer list it and commands for it are
  "No such server.", until the endpoint restarts from the configuration. An HA pair whose
  endpoints list different servers is made so.
- ``hide(name, reads=, endpoint=)``: the next ``reads`` reads of endpoint ``endpoint`` (of every
  endpoint when None) leave the server out, as a read that missed it; it still takes commands.
- ``set_by_hand(name, admin=, weight=)``: an operator's change by other means, recorded in
  ``by_hand`` apart from lbhealthd's; ``agent_says(name, admin)``: the server's agent-check
  answered (only for a server with ``has_agent``).

``commands`` lists every set command that reached at least one endpoint, with the endpoints it
landed on; ``reads`` counts the snapshots answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Literal

from lbhealthd.drivers.ha_merge import combined_error, merge_members
from lbhealthd.drivers.memory_endpoint import (
    Command,
    HandChange,
    LiveServer,
    MemoryEndpoint,
    MemoryServer,
    Op,
    Who,
    member_view,
)
from lbhealthd.errors import DriverError, Rejected, Unavailable
from lbhealthd.model import AdminState, Member, OpState, PoolSnapshot, ServerId, check_name

__all__ = ["Command", "HandChange", "MemoryDriver", "MemoryServer", "Op", "Who"]


class MemoryDriver:
    """The Driver protocol over in-memory pools; see the module docstring for the knobs."""

    def __init__(
        self,
        pools: Mapping[str, Sequence[MemoryServer]],
        *,
        endpoints: int = 1,
        max_in_flight: int = 256,
    ) -> None:
        if endpoints < 1:
            raise ValueError("at least one endpoint is needed")
        self.max_in_flight = max_in_flight
        self._config: dict[str, tuple[MemoryServer, ...]] = {}
        for pool, servers in pools.items():
            check_name(pool, "pool name")
            for spec in servers:
                check_name(spec.name, "server name")
            self._config[pool] = tuple(servers)
        self._endpoints = [MemoryEndpoint(i) for i in range(endpoints)]
        for ep in self._endpoints:
            ep.boot(self._config)
        self.commands: list[Command] = []
        self.by_hand: list[HandChange] = []
        self.reads = 0
        self.closed = False
        self._known: dict[tuple[str, ServerId], Member] = {}
        self._error: str | None = None
        self._gate: asyncio.Event | None = None
        self._gate_op: Op | None = None
        self._gate_after = False
        self._arrived = asyncio.Event()
        self.waiting = 0  # calls waiting at the gate now

    # --- the Driver protocol -----------------------------------------------------------------

    def _same_or_new(self, endpoint: str, pool: str, live: LiveServer) -> Member:
        member = member_view(pool, live)
        key = (endpoint, member.id)
        before = self._known.get(key)
        if before == member:
            return before
        self._known[key] = member
        return member

    async def snapshot(self, pool: str) -> PoolSnapshot:
        check_name(pool, "pool name")
        self._check_available()
        await self._at_gate("snapshot", after=False)
        views: list[list[Member] | None] = []
        errors: list[DriverError] = []
        for ep in self._endpoints:
            if not ep.running:
                errors.append(Unavailable("connection refused", endpoint=ep.name))
                views.append(None)
            elif pool not in ep.pools:
                errors.append(
                    Rejected(f"show servers state {pool}: Can't find backend.", endpoint=ep.name)
                )
                views.append(None)
            else:
                views.append([self._same_or_new(ep.name, pool, live) for live in ep.listed(pool)])
        if len(errors) == len(self._endpoints):
            raise combined_error(errors, len(self._endpoints), prefer=Rejected)
        self.reads += 1
        members, partial = merge_members(views)
        epoch = ",".join(ep.epoch for ep in self._endpoints)
        snap = PoolSnapshot(
            pool,
            tuple(members),
            epoch=epoch,
            partial=partial,
            counters=self.reads,
            failed={e.endpoint: str(e) for e in errors},
        )
        await self._at_gate("snapshot", after=True)
        return snap

    async def set_state(self, server: ServerId, state: AdminState) -> None:
        if not isinstance(state, AdminState):
            raise ValueError(f"invalid state {state!r}: expected an AdminState")
        await self._set(server, "state", state)

    async def set_weight(self, server: ServerId, weight: int) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
            raise ValueError(f"invalid weight {weight!r}: expected an integer 0..256")
        await self._set(server, "weight", weight)

    async def close(self) -> None:
        self.closed = True

    async def _set(
        self, server: ServerId, what: Literal["state", "weight"], value: AdminState | int
    ) -> None:
        check_name(server.pool, "pool name")
        check_name(server.server, "server name")
        self._check_available()
        op: Op = "set_state" if what == "state" else "set_weight"
        await self._at_gate(op, after=False)
        shown = value.value if isinstance(value, AdminState) else value
        cmd = f"set server {server.pool}/{server.server} {what} {shown}"
        landed: list[int] = []
        errors: list[DriverError] = []
        for ep in self._endpoints:
            if not ep.running:
                errors.append(Unavailable("connection refused", endpoint=ep.name))
                continue
            if ep.failing is None or ep.failing > 0:
                if ep.failing is not None:
                    ep.failing -= 1
                errors.append(Unavailable("connection reset by peer", endpoint=ep.name))
                continue
            servers = ep.pools.get(server.pool)
            if servers is None:
                errors.append(Rejected(f"{cmd!r}: No such backend.", endpoint=ep.name))
                continue
            live = servers.get(server.server)
            if live is None:
                errors.append(Rejected(f"{cmd!r}: No such server.", endpoint=ep.name))
                continue
            if isinstance(value, AdminState):
                live.admin = value
            else:
                live.weight = value
            landed.append(ep.index)
        if landed:
            self.commands.append(Command(server, what, value, tuple(landed)))
        if errors:
            raise combined_error(errors, len(self._endpoints), prefer=Unavailable)
        await self._at_gate(op, after=True)

    # --- knobs -------------------------------------------------------------------------------

    def unavailable(self, error: str | None) -> None:
        """From now on every call raises ``Unavailable(error)``; None makes the LB answer again."""
        self._error = error

    def stop_endpoint(self, index: int) -> None:
        """The process behind endpoint ``index`` is gone: reads and writes fail on it."""
        self._endpoints[index].running = False

    def start_endpoint(self, index: int) -> None:
        """Endpoint ``index`` runs again, as a new process: its runtime state is lost."""
        ep = self._endpoints[index]
        ep.running = True
        ep.boot(self._config)

    def restart(self, index: int | None = None) -> None:
        """Endpoint ``index`` (every endpoint when None) restarts: runtime state lost."""
        for ep in self._chosen(index):
            ep.running = True
            ep.boot(self._config)

    def fail_endpoint(self, index: int, calls: int | None = None) -> None:
        """The next ``calls`` set commands fail on endpoint ``index`` (all when None)."""
        self._endpoints[index].failing = calls

    def heal_endpoint(self, index: int) -> None:
        """Set commands reach endpoint ``index`` again."""
        self._endpoints[index].failing = 0

    def hold(self, op: Op | None = None, *, after: bool = False) -> None:
        """Calls of ``op`` (every call when None) wait until ``release()``: before they act, or
        after they acted when ``after`` is true."""
        self._gate = asyncio.Event()
        self._gate_op = op
        self._gate_after = after

    def release(self) -> None:
        """Let every waiting call go on; later calls no longer wait."""
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def held(self, count: int = 1) -> None:
        """Return once ``count`` calls are waiting at the gate."""
        while self.waiting < count:
            self._arrived.clear()
            await self._arrived.wait()

    def del_server(self, name: str | ServerId, endpoint: int | None = None) -> None:
        """The server is gone from endpoint ``endpoint`` (every one when None) until it
        restarts, as after HAProxy's ``del server``."""
        sid = self._sid(name)
        for ep in self._chosen(endpoint):
            del ep.pools[sid.pool][sid.server]

    def hide(self, name: str | ServerId, *, reads: int = 1, endpoint: int | None = None) -> None:
        """The next ``reads`` reads of endpoint ``endpoint`` (every one when None) miss the
        server; it is still there for commands, and listed again afterwards."""
        sid = self._sid(name)
        for ep in self._chosen(endpoint):
            self._live(ep, sid)  # KeyError for a server the endpoint does not have
            ep.hidden[(sid.pool, sid.server)] = reads

    def set_by_hand(
        self,
        name: str | ServerId,
        *,
        admin: AdminState | None = None,
        weight: int | None = None,
        endpoint: int | None = None,
    ) -> None:
        """An operator changes a server by other means (on ``endpoint``, or on every one)."""
        self._change(name, "operator", admin, weight, endpoint)

    def agent_says(self, name: str | ServerId, admin: AdminState) -> None:
        """The server's agent-check answered ``admin`` on every endpoint (HAProxy applies it)."""
        sid = self._sid(name)
        if not self._config_of(sid).has_agent:
            raise ValueError(f"{sid} has no agent-check")
        self._change(sid, "agent", admin, None, None)

    def set_op(self, name: str | ServerId, op: OpState, endpoint: int | None = None) -> None:
        """The LB's own health checks see the server ``op`` (down, up ...)."""
        sid = self._sid(name)
        for ep in self._chosen(endpoint):
            self._live(ep, sid).op = op

    def set_counters(
        self, name: str | ServerId, endpoint: int | None = None, **counters: int
    ) -> None:
        """Set traffic counters (``sessions``, ``queue``, ``session_rate``, ``sessions_total``)."""
        sid = self._sid(name)
        allowed = {"sessions", "queue", "session_rate", "sessions_total"}
        if not counters.keys() <= allowed:
            raise ValueError(f"unknown counters {sorted(counters.keys() - allowed)}")
        for ep in self._chosen(endpoint):
            live = self._live(ep, sid)
            for key, value in counters.items():
                setattr(live, key, value)

    # --- views for assertions ----------------------------------------------------------------

    def member(self, name: str | ServerId, endpoint: int = 0) -> Member:
        """One endpoint's view of one server."""
        sid = self._sid(name)
        return member_view(sid.pool, self._live(self._endpoints[endpoint], sid))

    def states(self, pool: str | None = None, endpoint: int = 0) -> dict[str, AdminState]:
        """Admin state by server name on one endpoint."""
        return {n: live.admin for n, live in self._pool(pool, endpoint).items()}

    def weights(self, pool: str | None = None, endpoint: int = 0) -> dict[str, int]:
        """Current weight by server name on one endpoint."""
        return {n: live.weight for n, live in self._pool(pool, endpoint).items()}

    def drained(self, pool: str | None = None, endpoint: int = 0) -> set[str]:
        """Names of the servers in DRAIN on one endpoint."""
        return {n for n, s in self.states(pool, endpoint).items() if s is AdminState.DRAIN}

    def sent(self, what: Literal["state", "weight"] | None = None) -> list[tuple[str, object]]:
        """``(server, value)`` of every command that reached the LB, oldest first."""
        return [
            (c.server.server, c.value.value if isinstance(c.value, AdminState) else c.value)
            for c in self.commands
            if what is None or c.what == what
        ]

    # --- internals ---------------------------------------------------------------------------

    def _check_available(self) -> None:
        if self._error is not None:
            raise Unavailable(self._error, endpoint="memory")

    async def _at_gate(self, op: Op, *, after: bool) -> None:
        gate = self._gate
        if gate is None or after is not self._gate_after or self._gate_op not in (None, op):
            return
        self.waiting += 1
        self._arrived.set()
        try:
            await gate.wait()
        finally:
            self.waiting -= 1

    def _change(
        self,
        name: str | ServerId,
        who: Who,
        admin: AdminState | None,
        weight: int | None,
        endpoint: int | None,
    ) -> None:
        sid = self._sid(name)
        if weight is not None and not 0 <= weight <= 256:
            raise ValueError(f"invalid weight {weight!r}: expected an integer 0..256")
        chosen = self._chosen(endpoint)
        for ep in chosen:
            live = self._live(ep, sid)
            if admin is not None:
                live.admin = admin
            if weight is not None:
                live.weight = weight
        self.by_hand.append(HandChange(sid, who, admin, weight, tuple(e.index for e in chosen)))

    def _chosen(self, index: int | None) -> list[MemoryEndpoint]:
        return list(self._endpoints) if index is None else [self._endpoints[index]]

    def _sid(self, name: str | ServerId) -> ServerId:
        if isinstance(name, ServerId):
            return name
        if "/" in name:
            return ServerId.parse(name)
        if len(self._config) != 1:
            raise ValueError(f"{name!r}: name the pool too (POOL/SERVER), there are several")
        return ServerId(next(iter(self._config)), name)

    def _config_of(self, sid: ServerId) -> MemoryServer:
        for spec in self._config.get(sid.pool, ()):
            if spec.name == sid.server:
                return spec
        raise KeyError(str(sid))

    def _live(self, ep: MemoryEndpoint, sid: ServerId) -> LiveServer:
        return ep.pools[sid.pool][sid.server]

    def _pool(self, pool: str | None, endpoint: int) -> dict[str, LiveServer]:
        if pool is None:
            if len(self._config) != 1:
                raise ValueError("name the pool: there are several")
            pool = next(iter(self._config))
        return self._endpoints[endpoint].pools[pool]
