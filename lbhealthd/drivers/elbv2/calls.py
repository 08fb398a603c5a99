"""Calls to the AWS API: the ELBv2 and EC2 clients, retries within a deadline, and what each
error means to lbhealthd.

Throttling, 5xx, connection errors and timeouts -> ``Unavailable``, retried with jittered
exponential backoff within the driver's ``timeout``; an unknown target group or target, a
validation error, a permission error or missing credentials -> ``Rejected`` (never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
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

from lbhealthd.drivers.elbv2.target_groups import TargetGroup
from lbhealthd.errors import Rejected, Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_elbv2.client import ElasticLoadBalancingv2Client

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


class Clients:
    """A driver's ELBv2 and EC2 clients: each created on first use, both closed together."""

    def __init__(
        self, session: AioSession, region: str, endpoint_url: str | None, timeout: float
    ) -> None:
        self._session = session
        self._region = region
        self._endpoint_url = endpoint_url
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

    async def elbv2(self) -> ElasticLoadBalancingv2Client:
        async with self._open:
            if self._elbv2 is None:
                self._elbv2 = await self._stack.enter_async_context(
                    self._session.create_client(
                        "elbv2",
                        region_name=self._region,
                        endpoint_url=self._endpoint_url,
                        config=self._config,
                    )
                )
            return self._elbv2

    async def ec2(self) -> Any:
        async with self._open:
            if self._ec2 is None:
                self._ec2 = await self._stack.enter_async_context(
                    self._session.create_client(
                        "ec2",
                        region_name=self._region,
                        endpoint_url=self._endpoint_url,
                        config=self._config,
                    )
                )
            return self._ec2

    async def close(self) -> None:
        await self._stack.aclose()
        self._elbv2 = None
        self._ec2 = None


async def call_with_retries(
    group: TargetGroup,
    operation: str,
    request: Callable[[], Awaitable[T]],
    *,
    where: str,
    budget: float,
    attempts: int,
    sleep: Callable[[float], Awaitable[None]],
    map_error: Callable[[ClientError | BotoCoreError], Unavailable | Rejected],
) -> T:
    """Make one API call, retrying ``Unavailable`` with backoff within ``budget`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    backoff = wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1)

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(backoff(state), deadline - loop.time() - 0.01))

    def stop(state: RetryCallState) -> bool:
        return state.attempt_number >= attempts or deadline - loop.time() < 0.05

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "driver_retry",
            endpoint=where,
            operation=operation,
            target_group=group.name,
            attempt=state.attempt_number,
            error=str(exc),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        stop=stop,
        wait=wait,
        sleep=sleep,
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
                    f"timed out after {budget:g}s",
                    endpoint=where,
                ) from exc
            except (ClientError, BotoCoreError) as exc:
                raise map_error(exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def map_error(
    exc: ClientError | BotoCoreError,
    group: TargetGroup,
    operation: str,
    target: str,
    *,
    where: str,
    region: str,
) -> Unavailable | Rejected:
    """The lbhealthd error for an AWS error of ``operation`` on ``group`` (and ``target``)."""
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
            return Unavailable(text, endpoint=where)
        if code == "TargetGroupNotFound":
            text = f"{what} was not found in {region} ({operation}: {message})"
        return Rejected(text, endpoint=where)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return Rejected(
            f"{operation} on {what}: no usable AWS credentials in the standard chain "
            "(environment, shared config/credentials files, SSO, container or instance "
            f"role): {exc}",
            endpoint=where,
        )
    if isinstance(exc, ParamValidationError | NoRegionError):
        return Rejected(f"{operation} on {what}: {exc}", endpoint=where)
    return Unavailable(f"{operation} on {what}: {type(exc).__name__}: {exc}", endpoint=where)


def error_code(exc: BaseException | None) -> str:
    """The AWS error code of a ClientError (``AccessDenied``...); "" for any other error."""
    if not isinstance(exc, ClientError):
        return ""
    return str(exc.response.get("Error", {}).get("Code", ""))
