"""Drive AWS ELBv2 target groups (ALB, NLB, GWLB) through the ElasticLoadBalancingV2 API.

A pool is a target group, named by its name or ARN (a name is resolved to its ARN once with
``DescribeTargetGroups`` and cached, with the group's attributes). A member is a registered
target: its name is the target Id (``i-0abc…`` or an IP address); a target registered on
several ports is named ``ID:PORT`` for each of them. Target Ids outside lbhealthd's safe
charset (``lambda`` and ``alb`` groups are refused altogether) are skipped with a warning.

State mapping (the LB has no admin state of its own; registration is the admin state):

    registered, any state but draining      -> READY
    draining (deregistration in progress)   -> DRAIN, or the state lbhealthd asked for
    gone after a deregistration lbhealthd did, remembered here -> DRAIN / MAINT, op DOWN

    healthy, unavailable (checks off)   -> UP          initial  -> STARTING
    draining                            -> STOPPING    unhealthy, unhealthy.draining, unused
                                                       and anything else -> DOWN

``set_state`` DRAIN or MAINT deregisters the target (connections drain for the group's
``deregistration_delay.timeout_seconds``); READY registers it again with the same port (and
Availability Zone). A deregistered target leaves ``DescribeTargetHealth`` once drained, so the
driver remembers the targets it deregistered (in memory, and in ``state_file`` when given, so
a restarted daemon can still restore them). There are no per-target weights: every member has
weight 1, and ``set_weight`` refuses anything else (the LB ramps new targets itself when the
group has ``slow_start.duration_seconds``).

Errors: throttling, 5xx, connection errors and timeouts -> ``Unavailable``, retried with
jittered exponential backoff within ``timeout``; an unknown target group or target, a
validation error, a permission error or missing credentials -> ``Rejected`` (never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
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

if TYPE_CHECKING:
    from types_aiobotocore_elbv2.client import ElasticLoadBalancingv2Client
    from types_aiobotocore_elbv2.type_defs import TargetDescriptionTypeDef

T = TypeVar("T")
log = structlog.get_logger("lbhealthd.drivers.elbv2")

TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
    }
)
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_OP = {
    "healthy": OpState.UP,
    "unavailable": OpState.UP,  # health checks disabled: the LB routes to the target
    "initial": OpState.STARTING,
    "draining": OpState.STOPPING,
}
_OUT = (AdminState.DRAIN, AdminState.MAINT)


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


@dataclass(frozen=True, slots=True)
class Remembered:
    """A target lbhealthd deregistered: what to register again, and the state it was given."""

    id: str
    port: int | None
    zone: str | None
    admin: AdminState

    def target(self) -> TargetDescriptionTypeDef:
        t: TargetDescriptionTypeDef = {"Id": self.id}
        if self.port is not None:
            t["Port"] = self.port
        if self.zone:
            t["AvailabilityZone"] = self.zone
        return t


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
        self.state_file = Path(state_file) if state_file is not None else None
        self._session = session or get_session()
        self._sleep = sleep
        self._config = AioConfig(
            retries={"total_max_attempts": 1},  # tenacity retries, within our deadline
            connect_timeout=min(timeout, 2.0),
            read_timeout=timeout,
            user_agent_extra="lbhealthd",
        )
        self._stack = contextlib.AsyncExitStack()
        self._open = asyncio.Lock()
        self._elbv2: ElasticLoadBalancingv2Client | None = None
        self._ec2: Any = None  # no typed stubs installed for EC2: one call, read defensively
        self._groups: dict[str, TargetGroup] = {}
        self._names: dict[ServerId, Remembered] = {}  # last snapshot: member -> its target
        self._addresses: dict[str, str] = {}  # instance id -> private IP
        self.remembered: dict[ServerId, Remembered] = self._load()

    # --- the Driver interface --------------------------------------------------------------

    async def snapshot(self, pool: str) -> PoolSnapshot:
        check_name(pool, "pool name")
        group = await self.group(pool)
        client = await self._client()
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
            members[sid] = self._member(
                sid,
                addresses.get(tid, tid),
                port,
                admin,
                _OP.get(state, OpState.DOWN),
                group,
                f"{state}: {reason}" if reason else state,
            )
            names[sid] = Remembered(tid, port, target.get("AvailabilityZone"), admin)
        for sid, gone in self.remembered.items():
            if sid.pool == pool and sid not in members:
                address = addresses.get(gone.id) or self._addresses.get(gone.id, gone.id)
                port = gone.port if gone.port is not None else group.port
                members[sid] = self._member(
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
        client = await self._client()
        if state in _OUT:
            if self._names.get(server, target).admin in _OUT and server in self.remembered:
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
        await self._stack.aclose()
        self._elbv2 = None
        self._ec2 = None

    # --- target groups and targets ------------------------------------------------------------

    async def group(self, pool: str) -> TargetGroup:
        """The pool's target group: resolved, with its attributes, on first use; then cached."""
        check_name(pool, "pool name")
        cached = self._groups.get(pool)
        if cached is not None:
            return cached
        ref = self.target_groups.get(pool, pool)
        check_target_group(ref)
        client = await self._client()
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
        group = TargetGroup(
            pool=pool,
            ref=ref,
            arn=arn,
            name=tg.get("TargetGroupName", ref),
            target_type=kind,
            port=tg.get("Port"),
            health_checks=tg.get("HealthCheckEnabled", True),
            deregistration_delay=_int(values.get("deregistration_delay.timeout_seconds"), 300),
            slow_start=_int(values.get("slow_start.duration_seconds"), 0),
        )
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

    def _member(
        self,
        sid: ServerId,
        address: str,
        port: int | None,
        admin: AdminState,
        op: OpState,
        group: TargetGroup,
        status: str,
    ) -> Member:
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

    async def _addresses_of(self, group: TargetGroup, ids: list[str]) -> dict[str, str]:
        """Private IPs of instance targets (cached); the Id stands in when EC2 may not be read."""
        if group.target_type != "instance" or not self.resolve_addresses:
            return {}
        missing = [i for i in ids if i.startswith("i-") and i not in self._addresses]
        if missing:
            ec2 = await self._ec2_client()
            try:
                reply = await self._call(
                    group, "DescribeInstances", lambda: ec2.describe_instances(InstanceIds=missing)
                )
            except Rejected as exc:
                cause = exc.__cause__
                code = (
                    cause.response.get("Error", {}).get("Code")
                    if isinstance(cause, ClientError)
                    else None
                )
                if code not in DENIED_CODES:
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

    # --- calls, errors, retries -----------------------------------------------------------

    async def _client(self) -> ElasticLoadBalancingv2Client:
        async with self._open:
            if self._elbv2 is None:
                self._elbv2 = await self._stack.enter_async_context(
                    self._session.create_client(
                        "elbv2",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=self._config,
                    )
                )
            return self._elbv2

    async def _ec2_client(self) -> Any:
        async with self._open:
            if self._ec2 is None:
                self._ec2 = await self._stack.enter_async_context(
                    self._session.create_client(
                        "ec2",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=self._config,
                    )
                )
            return self._ec2

    async def _call(
        self,
        group: TargetGroup,
        operation: str,
        request: Callable[[], Awaitable[T]],
        target: str = "",
    ) -> T:
        """Make one API call, retrying transient errors with backoff within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        backoff = wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1)

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(backoff(state), deadline - loop.time() - 0.01))

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= self.attempts or deadline - loop.time() < 0.05

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "driver_retry",
                endpoint=self.where,
                operation=operation,
                target_group=group.name,
                attempt=state.attempt_number,
                error=str(exc),
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop,
            wait=wait,
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    async with asyncio.timeout_at(deadline):
                        return await request()
                except TimeoutError as exc:
                    raise Unavailable(
                        f"{operation} on target group {group.ref!r} (pool {group.pool}) "
                        f"timed out after {self.timeout:g}s",
                        endpoint=self.where,
                    ) from exc
                except (ClientError, BotoCoreError) as exc:
                    raise self._map(exc, group, operation, target) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(
        self, exc: ClientError | BotoCoreError, group: TargetGroup, operation: str, target: str
    ) -> Unavailable | Rejected:
        what = f"target group {group.ref!r} (pool {group.pool})"
        if target:
            what = f"target {target!r} in {what}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            text = f"{operation} on {what}: {code}: {message}"
            if code in TRANSIENT_CODES or status >= 500 or status == 429:
                return Unavailable(text, endpoint=self.where)
            if code == "TargetGroupNotFound":
                self._groups.pop(group.pool, None)
                text = f"{what} was not found in {self.region} ({operation}: {message})"
            return Rejected(text, endpoint=self.where)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return Rejected(
                f"{operation} on {what}: no usable AWS credentials in the standard chain "
                "(environment, shared config/credentials files, SSO, container or instance "
                f"role): {exc}",
                endpoint=self.where,
            )
        if isinstance(exc, ParamValidationError | NoRegionError):
            return Rejected(f"{operation} on {what}: {exc}", endpoint=self.where)
        return Unavailable(
            f"{operation} on {what}: {type(exc).__name__}: {exc}", endpoint=self.where
        )

    # --- remembered deregistrations ---------------------------------------------------------

    def remember(
        self, server: ServerId, port: int | None = None, state: AdminState = AdminState.DRAIN
    ) -> None:
        """Record that lbhealthd took ``server`` out (e.g. from the daemon's own records after
        a restart without ``state_file``); ``port`` None = the target group's port."""
        if state not in _OUT:
            raise ValueError("only DRAIN or MAINT can be remembered")
        self._remember(server, Remembered(server.server, port, None, state))

    def _remember(self, server: ServerId, entry: Remembered) -> None:
        if self.remembered.get(server) != entry:
            self.remembered[server] = entry
            self._save()

    def _forget(self, server: ServerId) -> None:
        if self.remembered.pop(server, None) is not None:
            self._save()

    def _load(self) -> dict[ServerId, Remembered]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
            return {
                ServerId.parse(key): Remembered(
                    str(v["id"]), v.get("port"), v.get("zone"), AdminState(v["admin"])
                )
                for key, v in dict(raw["targets"]).items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("elbv2_state_unreadable", file=str(self.state_file), error=str(exc))
            return {}

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "targets": {
                str(sid): {"id": r.id, "port": r.port, "zone": r.zone, "admin": r.admin.value}
                for sid, r in sorted(self.remembered.items())
            }
        }
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".elbv2-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.state_file)
        except OSError as exc:
            log.error("elbv2_state_write_failed", file=str(self.state_file), error=str(exc))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default
