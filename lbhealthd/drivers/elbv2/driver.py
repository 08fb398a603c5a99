"""The ELBv2 Driver: a pool is a target group, a member a registered target.

``set_state`` DRAIN or MAINT deregisters the target (connections drain for the group's
``deregistration_delay.timeout_seconds``), remembering it first; READY registers it again with
the same port (and Availability Zone) and forgets it. ``set_weight`` accepts only weight 1.
Target groups are resolved once and cached; instance targets get their private IP as address
when EC2 may be read.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import structlog
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from lbhealthd.drivers.elbv2.calls import (
    DENIED_CODES,
    Clients,
    call_with_retries,
    error_code,
    map_error,
)
from lbhealthd.drivers.elbv2.deregistered import (
    OUT_STATES,
    FileKeeper,
    Keeper,
    Remembered,
    load_remembered,
    save_remembered,
)
from lbhealthd.drivers.elbv2.target_groups import (
    TargetGroup,
    described_group,
    member,
    op_state,
)
from lbhealthd.errors import InvalidName, Rejected, Unavailable
from lbhealthd.model import (
    AdminState,
    Member,
    OpState,
    PoolSnapshot,
    ServerId,
    check_name,
    check_target_group,
)

T = TypeVar("T")
log = structlog.get_logger("lbhealthd.drivers.elbv2")


class ELBv2Driver:
    """The Driver for AWS ELBv2 target groups; ``target_groups`` maps pool -> name or ARN.

    A pool missing from ``target_groups`` is the target group of the same name.
    """

    max_in_flight = 1  # one API call at a time, as AWS's per-account request rate expects

    def __init__(
        self,
        region: str,
        endpoint_url: str | None = None,
        timeout: float = 5.0,
        target_groups: Mapping[str, str] | None = None,
        *,
        attempts: int = 4,
        resolve_addresses: bool = True,
        state_file: str | os.PathLike[str] | None = None,
        keeper: Keeper | None = None,
        session: AioSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
            raise ValueError(f"invalid AWS region {region!r}: expected e.g. 'eu-west-1'")
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"invalid endpoint_url {endpoint_url!r}: expected an http(s) URL")
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be > 0 and attempts >= 1")
        self.target_groups = {
            check_name(pool, "pool name"): check_target_group(ref)
            for pool, ref in (target_groups or {}).items()
        }
        self.region = region
        self.endpoint_url = endpoint_url
        self.where = endpoint_url or f"elbv2 {region}"
        self.timeout = timeout
        self.attempts = attempts
        self.resolve_addresses = resolve_addresses
        # With a keeper, ``state_file`` is where an earlier version kept the record: read
        # when the keeper holds none, removed once the keeper has it.
        self.state_file = Path(state_file) if state_file is not None else None
        self._legacy = self.state_file if keeper is not None else None
        self._keeper = keeper or (FileKeeper(self.state_file) if self.state_file else None)
        self._clients = Clients(session or get_session(), region, endpoint_url, timeout)
        self._sleep = sleep
        self._groups: dict[str, TargetGroup] = {}
        self._names: dict[ServerId, Remembered] = {}  # last snapshot: member -> its target
        self._addresses: dict[str, str] = {}  # instance id -> private IP
        self.remembered: dict[ServerId, Remembered] = load_remembered(self._keeper, self._legacy)

    # --- the Driver interface --------------------------------------------------------------

    async def snapshot(self, pool: str) -> PoolSnapshot:
        check_name(pool, "pool name")
        group = await self.group(pool)
        client = await self._clients.elbv2()
        reply = await self._call(
            group,
            "DescribeTargetHealth",
            lambda: client.describe_target_health(TargetGroupArn=group.arn),
        )
        descriptions = [d for d in reply.get("TargetHealthDescriptions", []) if "Target" in d]
        ports: dict[str, set[int | None]] = {}
        for d in descriptions:
            ports.setdefault(d["Target"]["Id"], set()).add(d["Target"].get("Port"))
        addresses = await self._addresses_of(group, list(ports))
        members: dict[ServerId, Member] = {}
        names: dict[ServerId, Remembered] = {}
        back: list[ServerId] = []
        for d in descriptions:
            target = d["Target"]
            tid, port = target["Id"], target.get("Port", group.port)
            name = tid if len(ports[tid]) == 1 else f"{tid}:{port}"
            try:
                sid = ServerId(pool, name)
            except InvalidName:
                log.warning(
                    "elbv2_target_skipped",
                    pool=pool,
                    target_group=group.name,
                    target=tid[:100],
                    note="the target Id is not a safe server name",
                )
                continue
            health = d.get("TargetHealth", {})
            state = health.get("State", "")
            admin = AdminState.READY
            if state == "draining":
                gone = self.remembered.get(sid)
                admin = gone.admin if gone is not None else AdminState.DRAIN
            elif sid in self.remembered:
                back.append(sid)  # registered again (by hand, or the drain never landed)
            reason = health.get("Reason", "")
            members[sid] = member(
                sid,
                addresses.get(tid, tid),
                port,
                admin,
                op_state(state),
                group,
                f"{state}: {reason}" if reason else state,
            )
            names[sid] = Remembered(tid, port, target.get("AvailabilityZone"), admin)
        for sid, gone in self.remembered.items():
            if sid.pool == pool and sid not in members:
                address = addresses.get(gone.id) or self._addresses.get(gone.id, gone.id)
                port = gone.port if gone.port is not None else group.port
                members[sid] = member(
                    sid, address, port, gone.admin, OpState.DOWN, group, "deregistered"
                )
                names[sid] = gone
        for sid in back:
            self._forget(sid)
        self._names = {k: v for k, v in self._names.items() if k.pool != pool} | names
        return PoolSnapshot(pool, tuple(members.values()), epoch=group.arn)

    async def set_state(self, server: ServerId, state: AdminState) -> None:
        if not isinstance(state, AdminState):
            raise ValueError(f"invalid state {state!r}: expected an AdminState")
        check_name(server.pool, "pool name")
        check_name(server.server, "server name")
        group = await self.group(server.pool)
        target = await self._target(group, server)
        client = await self._clients.elbv2()
        if state in OUT_STATES:
            if self._names.get(server, target).admin in OUT_STATES and server in self.remembered:
                # Already deregistered by lbhealthd: only the state it reports changes.
                self._remember(server, Remembered(target.id, target.port, target.zone, state))
                return
            # Remember first: a crash after the call must not lose the way back.
            self._remember(server, Remembered(target.id, target.port, target.zone, state))
            try:
                await self._call(
                    group,
                    "DeregisterTargets",
                    lambda: client.deregister_targets(
                        TargetGroupArn=group.arn, Targets=[target.target()]
                    ),
                    target=target.id,
                )
            except Rejected:
                self._forget(server)  # refused: nothing changed
                raise
            # Unavailable: it may have landed; the next snapshot tells (registered -> forgotten)
            log.info(
                "elbv2_target_deregistered",
                server=str(server),
                target_group=group.name,
                target=target.id,
                port=target.port,
                state=state.value,
                deregistration_delay_s=group.deregistration_delay,
            )
            return
        await self._call(
            group,
            "RegisterTargets",
            lambda: client.register_targets(TargetGroupArn=group.arn, Targets=[target.target()]),
            target=target.id,
        )
        self._forget(server)
        log.info(
            "elbv2_target_registered",
            server=str(server),
            target_group=group.name,
            target=target.id,
            port=target.port,
            slow_start_s=group.slow_start,
        )

    async def set_weight(self, server: ServerId, weight: int) -> None:
        check_name(server.pool, "pool name")
        check_name(server.server, "server name")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"invalid weight {weight!r}: expected an integer")
        if weight != 1:
            raise Rejected(
                f"{server}: weights are not supported by ELBv2 target groups (asked {weight}); "
                "slow start maps to the target group's slow_start.duration_seconds",
                endpoint=self.where,
            )

    async def close(self) -> None:
        await self._clients.close()

    # --- target groups and targets ------------------------------------------------------------

    async def group(self, pool: str) -> TargetGroup:
        """The pool's target group: resolved, with its attributes, on first use; then cached."""
        check_name(pool, "pool name")
        cached = self._groups.get(pool)
        if cached is not None:
            return cached
        ref = self.target_groups.get(pool, pool)
        check_target_group(ref)
        client = await self._clients.elbv2()
        probe = TargetGroup(pool, ref, ref, ref, "", None, True, 0, 0)
        reply = await self._call(
            probe,
            "DescribeTargetGroups",
            lambda: (
                client.describe_target_groups(TargetGroupArns=[ref])
                if ref.startswith("arn:")
                else client.describe_target_groups(Names=[ref])
            ),
        )
        found = reply.get("TargetGroups", [])
        if len(found) != 1:
            raise Rejected(
                f"target group {ref!r} (pool {pool}): expected one target group, found "
                f"{len(found)}",
                endpoint=self.where,
            )
        tg = found[0]
        kind = tg.get("TargetType", "instance")
        if kind not in ("instance", "ip"):
            raise Rejected(
                f"target group {ref!r} (pool {pool}) has target type {kind!r}: lbhealthd drives "
                "only 'instance' and 'ip' target groups",
                endpoint=self.where,
            )
        arn = tg["TargetGroupArn"]
        probe = TargetGroup(pool, ref, arn, tg.get("TargetGroupName", ref), kind, None, True, 0, 0)
        attrs = await self._call(
            probe,
            "DescribeTargetGroupAttributes",
            lambda: client.describe_target_group_attributes(TargetGroupArn=arn),
        )
        values = {a.get("Key", ""): a.get("Value", "") for a in attrs.get("Attributes", [])}
        group = described_group(pool, ref, tg, values)
        self._groups[pool] = group
        log.info(
            "elbv2_target_group_resolved",
            pool=pool,
            target_group=group.name,
            arn=arn,
            target_type=kind,
            deregistration_delay_s=group.deregistration_delay,
            slow_start_s=group.slow_start,
        )
        return group

    async def _target(self, group: TargetGroup, server: ServerId) -> Remembered:
        """The target behind ``server``, from the last snapshot, else from a fresh one."""
        target = self._names.get(server) or self.remembered.get(server)
        if target is None:
            await self.snapshot(server.pool)
            target = self._names.get(server)
        if target is None:
            raise Rejected(
                f"target {server.server!r} is not registered in target group {group.name!r} "
                f"(pool {server.pool}) and lbhealthd did not deregister it",
                endpoint=self.where,
            )
        return target

    async def _addresses_of(self, group: TargetGroup, ids: list[str]) -> dict[str, str]:
        """Private IPs of instance targets (cached); the Id stands in when EC2 may not be read."""
        if group.target_type != "instance" or not self.resolve_addresses:
            return {}
        missing = [i for i in ids if i.startswith("i-") and i not in self._addresses]
        if missing:
            ec2 = await self._clients.ec2()
            try:
                reply = await self._call(
                    group, "DescribeInstances", lambda: ec2.describe_instances(InstanceIds=missing)
                )
            except Rejected as exc:
                if error_code(exc.__cause__) not in DENIED_CODES:
                    log.warning("elbv2_addresses_unresolved", pool=group.pool, error=str(exc))
                    return {i: self._addresses[i] for i in ids if i in self._addresses}
                self.resolve_addresses = False
                log.warning(
                    "elbv2_addresses_unresolved",
                    pool=group.pool,
                    error=str(exc),
                    note="instance targets get their Id as address; allow "
                    "ec2:DescribeInstances or set resolve_addresses: false",
                )
                return {}
            for reservation in reply.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    ip = instance.get("PrivateIpAddress")
                    if isinstance(ip, str) and ip:
                        self._addresses[str(instance.get("InstanceId"))] = ip
        return {i: self._addresses[i] for i in ids if i in self._addresses}

    # --- calls and errors --------------------------------------------------------------------

    async def _call(
        self,
        group: TargetGroup,
        operation: str,
        request: Callable[[], Awaitable[T]],
        target: str = "",
    ) -> T:
        """Make one API call, retrying transient errors with backoff within ``timeout``."""
        return await call_with_retries(
            group,
            operation,
            request,
            where=self.where,
            budget=self.timeout,
            attempts=self.attempts,
            sleep=self._sleep,
            map_error=lambda exc: self._map(exc, group, operation, target),
        )

    def _map(
        self, exc: ClientError | BotoCoreError, group: TargetGroup, operation: str, target: str
    ) -> Unavailable | Rejected:
        error = map_error(exc, group, operation, target, where=self.where, region=self.region)
        if isinstance(error, Rejected) and error_code(exc) == "TargetGroupNotFound":
            # The cached group is stale: the next use resolves it again.
            self._groups.pop(group.pool, None)
        return error

    # --- remembered deregistrations ---------------------------------------------------------

    def remember(
        self, server: ServerId, port: int | None = None, state: AdminState = AdminState.DRAIN
    ) -> None:
        """Record that lbhealthd took ``server`` out (e.g. from the daemon's own records after
        a restart without ``state_file``); ``port`` None = the target group's port."""
        if state not in OUT_STATES:
            raise ValueError("only DRAIN or MAINT can be remembered")
        self._remember(server, Remembered(server.server, port, None, state))

    def _remember(self, server: ServerId, entry: Remembered) -> None:
        if self.remembered.get(server) != entry:
            self.remembered[server] = entry
            self._save()

    def _forget(self, server: ServerId) -> None:
        if self.remembered.pop(server, None) is not None:
            self._save()

    def _save(self) -> None:
        save_remembered(self._keeper, self.remembered, self._legacy)
