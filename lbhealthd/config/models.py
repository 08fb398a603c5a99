"""The config schema: pydantic models of every section, and their engine settings.

Every model is strict and refuses unknown keys, so a typo cannot silently fall back to a
default. ``Config.engine_settings`` turns the validated pools into the engine's plain settings.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lbhealthd.config.values import Duration, Mark, SafeName, Share, check_socket, safe_name
from lbhealthd.engine.settings import Marks as EngineMarks
from lbhealthd.engine.settings import PoolSettings, Settings
from lbhealthd.errors import InvalidName
from lbhealthd.model import check_target_group


class _Strict(BaseModel):
    # strict: YAML's true/false are not numbers and "3" is not an integer.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, strict=True)


class DaemonConfig(_Strict):
    state_dir: str = "/var/lib/lbhealthd"
    control_socket: str = "/run/lbhealthd/control.sock"
    http: str = "127.0.0.1:9110"
    log_format: Literal["json", "console"] = "json"
    # uvloop comes with the `fast` extra; `uvloop` without it is refused when the daemon starts.
    event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"

    @field_validator("http")
    @classmethod
    def _http(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9110 (got {value!r})")
        return value

    @field_validator("state_dir", "control_socket")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("expected a path")
        return value

    dry_run: bool = False
    round_interval: Duration = Field(default=1.0, gt=0)
    # A server an operator puts back in rotation by hand (not through lbhealthd) is kept in
    # for this long before the daemon may drain it again (0 = until `lbhealthd restore`).
    manual_change_hold: Duration = 600.0
    # Event-loop lag above this means the daemon itself is starved: its probes are not trusted.
    max_loop_lag: Duration = Field(default=0.25, gt=0)
    # The live audit runs after every change lbhealthd makes and at least this often.
    audit_interval: Duration = Field(default=60.0, gt=0)
    # Per listener (the HTTP listener, the control socket): connections open at once, and how
    # long one may stay open without a request being served.
    max_connections: int = Field(default=64, ge=1)
    idle_timeout: Duration = Field(default=10.0, gt=0)


class HAProxyConfig(_Strict):
    sockets: list[str] = Field(default_factory=lambda: ["unix:/run/haproxy/admin.sock"])
    timeout: Duration = Field(default=2.0, gt=0)
    # How often the counters (`show stat`) are read: a round in between reuses the last read.
    stats_interval: Duration = Field(default=1.0, ge=0, le=3600)

    @field_validator("sockets")
    @classmethod
    def _sockets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one socket is required")
        for item in value:
            check_socket(item)
        if len(set(value)) != len(value):
            raise ValueError("the same socket is listed twice")
        return value


_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


class ELBv2Config(_Strict):
    region: str
    endpoint_url: str | None = None
    timeout: Duration = Field(default=5.0, gt=0)
    target_groups: dict[SafeName, str] = Field(default_factory=dict)  # pool -> name or ARN
    resolve_addresses: bool = True

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION_RE.fullmatch(value):
            raise ValueError(f"expected an AWS region such as eu-west-1 (got {value!r})")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value

    @field_validator("target_groups")
    @classmethod
    def _groups(cls, value: dict[str, str]) -> dict[str, str]:
        for pool, ref in value.items():
            try:
                check_target_group(ref)
            except InvalidName as exc:
                raise ValueError(f"pool {pool!r}: {exc}") from None
        return value


class LoadBalancerConfig(_Strict):
    type: Literal["haproxy", "aws_elbv2"] = "haproxy"
    haproxy: HAProxyConfig = Field(default_factory=HAProxyConfig)
    aws_elbv2: ELBv2Config | None = None

    @model_validator(mode="after")
    def _section(self) -> LoadBalancerConfig:
        if self.type == "aws_elbv2" and self.aws_elbv2 is None:
            raise ValueError("type aws_elbv2 needs a load_balancer.aws_elbv2 section (region)")
        return self


_PLACEHOLDER_RE = re.compile(r"{([^{}]*)}")


class ProbeConfig(_Strict):
    url: str = "http://{address}:{port}/health"
    interval: Duration = Field(default=1.0, gt=0)
    timeout: Duration = Field(default=0.8, gt=0)
    fast_interval: Duration | None = Field(default=None, gt=0)
    load_fields: dict[str, str] = Field(default_factory=dict)

    @property
    def confirm_interval(self) -> float:
        """The time to the next probe of a server whose sample starts or extends a streak
        toward a drain or a restore: ``fast_interval``, by default a quarter of ``interval``."""
        return self.fast_interval if self.fast_interval is not None else self.interval / 4

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        for name in _PLACEHOLDER_RE.findall(value):
            if name not in ("name", "address", "port"):
                raise ValueError(
                    f"unknown placeholder {{{name}}}: use {{name}} {{address}} {{port}}"
                )
        return value

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> ProbeConfig:
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must not exceed interval ({self.interval:g}s)"
            )
        if self.fast_interval is not None and self.fast_interval > self.interval:
            raise ValueError(
                f"fast_interval ({self.fast_interval:g}s) must not exceed interval "
                f"({self.interval:g}s)"
            )
        return self


class MarksConfig(_Strict):
    high: Mark
    low: Mark

    @model_validator(mode="after")
    def _ordered(self) -> MarksConfig:
        if not (math.isfinite(self.high) and math.isfinite(self.low)):
            raise ValueError("high and low must be finite numbers")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        return self


class BalanceAlertConfig(_Strict):
    factor: float = Field(default=2.0, gt=1.0)
    for_: Duration = Field(default=30.0, alias="for", ge=0)
    min_sessions: int = Field(default=50, ge=1)
    window: Duration = Field(default=10.0, gt=0)


# Signals every sample can carry without a load field.
BUILTIN_SIGNALS = ("latency_ms", "lb_queue", "lb_sessions", "lb_rate")


def _default_overload() -> dict[str, MarksConfig]:
    return {"latency_ms": MarksConfig(high=500, low=200)}


class PoolConfig(_Strict):
    name: SafeName
    servers: list[SafeName] | None = None
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    overload: dict[str, MarksConfig] = Field(default_factory=_default_overload)
    fall: int = Field(default=3, ge=1)
    rise: int = Field(default=5, ge=1)
    min_drain: Duration = 30.0
    flap_backoff: float = Field(default=2.0, ge=1.0)
    flap_window: Duration = 600.0
    flap_max_hold: Duration = 600.0
    slow_start: Duration = 60.0
    slow_start_floor: Share = 0.1
    max_drained: Share = 0.4
    min_in_service: int = Field(default=2, ge=0)
    blind_threshold: Share = 0.8
    # A server missing from the LB's reads is remembered this long (one lbhealthd holds out
    # or ramps up: as long as it holds it).
    absent_grace: Duration = 30.0
    expected_weights: dict[str, int] = Field(default_factory=dict)
    # Live weights that differ from expected_weights are set back (not while lbhealthd ramps
    # a server up or holds it out).
    enforce_weights: bool = False
    # One of ``overload``'s signals whose value is the share of a server's capacity in use:
    # a drain only while the servers left can carry the drained one's load.
    capacity_signal: str | None = None
    balance_alert: BalanceAlertConfig = Field(default_factory=BalanceAlertConfig)

    @field_validator("overload")
    @classmethod
    def _some_signal(cls, value: dict[str, MarksConfig]) -> dict[str, MarksConfig]:
        if not value:
            raise ValueError("at least one signal is required (latency_ms, for instance)")
        return value

    @field_validator("capacity_signal")
    @classmethod
    def _capacity_signal(cls, value: str | None, info: ValidationInfo) -> str | None:
        overload = info.data.get("overload")
        if value is not None and overload is not None and value not in overload:
            raise ValueError(
                f"names signal {value!r}, which is not one of the pool's overload signals "
                f"({', '.join(sorted(overload))})"
            )
        return value

    @field_validator("expected_weights")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        for key, weight in value.items():
            if key != "default":
                safe_name(key)
            if not 0 <= weight <= 256:
                raise ValueError(f"weight of {key!r} must be between 0 and 256 (got {weight})")
        return value

    @field_validator("enforce_weights")
    @classmethod
    def _enforce_needs_weights(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("expected_weights"):
            raise ValueError(
                "enforce_weights requires expected_weights (the weights it sets servers back to)"
            )
        return value

    @model_validator(mode="after")
    def _signals_known(self) -> PoolConfig:
        known = set(BUILTIN_SIGNALS) | set(self.probe.load_fields)
        unknown = sorted(set(self.overload) - known)
        if unknown:
            raise ValueError(
                f"overload names unknown signal(s) {', '.join(unknown)}: a signal is one of "
                f"{', '.join(BUILTIN_SIGNALS)} or a key of probe.load_fields"
            )
        if self.flap_max_hold < self.min_drain:
            raise ValueError(
                f"flap_max_hold ({self.flap_max_hold:g}s) must be >= min_drain "
                f"({self.min_drain:g}s)"
            )
        return self


class Config(_Strict):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    load_balancer: LoadBalancerConfig = Field(default_factory=LoadBalancerConfig)
    pools: list[PoolConfig]

    @field_validator("pools")
    @classmethod
    def _pools(cls, value: list[PoolConfig]) -> list[PoolConfig]:
        if not value:
            raise ValueError("at least one pool is required")
        seen: dict[str, int] = {}
        for i, pool in enumerate(value):
            if pool.name in seen:
                raise ValueError(
                    f"pool name {pool.name!r} appears twice (pools[{seen[pool.name]}] and "
                    f"pools[{i}])"
                )
            seen[pool.name] = i
        return value

    def pool(self, name: str) -> PoolConfig:
        """The pool called ``name``; KeyError if there is none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def engine_settings(self) -> Settings:
        """The engine's plain settings for every pool."""
        return Settings(pools={p.name: _pool_settings(p) for p in self.pools})


def _pool_settings(pool: PoolConfig) -> PoolSettings:
    return PoolSettings(
        name=pool.name,
        marks={k: EngineMarks(high=m.high, low=m.low) for k, m in pool.overload.items()},
        fall=pool.fall,
        rise=pool.rise,
        min_drain=pool.min_drain,
        flap_backoff=pool.flap_backoff,
        flap_window=pool.flap_window,
        flap_max_hold=pool.flap_max_hold,
        slow_start=pool.slow_start,
        slow_start_floor=pool.slow_start_floor,
        max_drained=pool.max_drained,
        min_in_service=pool.min_in_service,
        blind_threshold=pool.blind_threshold,
        absent_grace=pool.absent_grace,
        enforce_weights=pool.enforce_weights,
        capacity_signal=pool.capacity_signal,
        probe_interval=pool.probe.interval,
    )
