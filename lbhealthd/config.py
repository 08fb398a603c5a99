"""Configuration: YAML through PyYAML's safe loader, validated by pydantic, then converted into
the engine's plain settings.

A file is all or nothing: any problem refuses the whole file with one line per problem, each
naming its field path (``pools[0].fall``) and, where the YAML gives it, its line. Unknown keys
are refused too, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lbhealthd.engine.settings import Marks as EngineMarks
from lbhealthd.engine.settings import PoolSettings, Settings
from lbhealthd.errors import ConfigError, InvalidName, Problem
from lbhealthd.model import check_name, check_target_group

ENV_VAR = "LBHEALTHD_CONFIG"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"number too large (got {str(value)[:20]}...)") from None


def parse_duration(value: object) -> float:
    """``500ms``, ``2s``, ``1.5m``, ``10m``, ``1h``, ``1d`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 2s or 10m (got {value!r})")
    if isinstance(value, int | float):
        seconds = _as_float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 500ms, 2s or 10m (got {value!r})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a non-negative duration (got {value!r})")
    return seconds


def parse_share(value: object) -> float:
    """``40%`` or ``0.4`` → 0.4. A bare number above 1 is refused, not guessed at."""
    if isinstance(value, bool):
        raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})") from None
    elif isinstance(value, int | float):
        share = _as_float(value)
    else:
        raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})")
    if not (0.0 <= share <= 1.0) or math.isnan(share):
        raise ValueError(f"must be between 0% and 100% (got {value!r})")
    return share


def _safe_name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a name (got {value!r})")
    try:
        return check_name(value)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Share = Annotated[float, BeforeValidator(parse_share)]
SafeName = Annotated[str, BeforeValidator(_safe_name)]

_SOCKET_RE = re.compile(r"unix:(/.+)|tcp:(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def check_socket(value: str) -> str:
    """``unix:/abs/path`` or ``tcp:HOST:PORT``; anything else raises ValueError."""
    m = _SOCKET_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"expected unix:/PATH or tcp:HOST:PORT (got {value!r})")
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return value


class _Strict(BaseModel):
    # strict: YAML's true/false are not numbers and "3" is not an integer.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, strict=True)


class DaemonConfig(_Strict):
    state_dir: str = "/var/lib/lbhealthd"
    control_socket: str = "/run/lbhealthd/control.sock"
    http: str = "127.0.0.1:9110"
    log_format: Literal["json", "console"] = "json"

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


class HAProxyConfig(_Strict):
    sockets: list[str] = Field(default_factory=lambda: ["unix:/run/haproxy/admin.sock"])
    timeout: Duration = Field(default=2.0, gt=0)

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
    load_fields: dict[str, str] = Field(default_factory=dict)

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
        return self


class MarksConfig(_Strict):
    high: float
    low: float

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
    expected_weights: dict[str, int] = Field(default_factory=dict)
    balance_alert: BalanceAlertConfig = Field(default_factory=BalanceAlertConfig)

    @field_validator("overload")
    @classmethod
    def _some_signal(cls, value: dict[str, MarksConfig]) -> dict[str, MarksConfig]:
        if not value:
            raise ValueError("at least one signal is required (latency_ms, for instance)")
        return value

    @field_validator("expected_weights")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        for key, weight in value.items():
            if key != "default":
                _safe_name(key)
            if not 0 <= weight <= 256:
                raise ValueError(f"weight of {key!r} must be between 0 and 256 (got {weight})")
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
    )


# --- loading -------------------------------------------------------------------------------


def resolve_path(path: str | None) -> str:
    """The config path from ``-c`` or else ``$LBHEALTHD_CONFIG``; ConfigError if neither."""
    chosen = path or os.environ.get(ENV_VAR)
    if not chosen:
        raise ConfigError(
            "(none)", [Problem("-c", f"no config file given (-c FILE or ${ENV_VAR})")]
        )
    return chosen


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(file)", f"cannot read: {exc}")]) from exc
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    except RecursionError:
        raise ConfigError(source, [Problem("(yaml)", "nesting too deep")]) from None
    lines: dict[str, int] = {}
    duplicates: list[Problem] = []
    if node is not None:
        try:
            size = _expanded_size(node, {}, set())
        except (_Cyclic, RecursionError):
            raise ConfigError(source, [Problem("(yaml)", "an alias refers to itself")]) from None
        if size > MAX_NODES:
            raise ConfigError(
                source,
                [
                    Problem(
                        "(yaml)",
                        f"the document expands to {size:,} values through aliases "
                        f"(at most {MAX_NODES:,})",
                    )
                ],
            )
        _index_lines(node, "", lines, duplicates, set())
    if duplicates:
        raise ConfigError(source, duplicates)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("(top)", "expected a mapping with a pools: list")])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, lines) for err in exc.errors()]
        raise ConfigError(source, problems) from None


MAX_NODES = 100_000


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    message = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return ConfigError(source, [Problem("(yaml)", message, line)])


class _Cyclic(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], ancestors: set[int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (memoised: O(nodes))."""
    key = id(node)
    if key in ancestors:
        raise _Cyclic
    if key in memo:
        return memo[key]
    ancestors.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, ancestors) + _expanded_size(v, memo, ancestors)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, memo, ancestors)
    ancestors.discard(key)
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]+")


def _key_text(key: object) -> str:
    text = str(key)
    return text if _PLAIN_KEY.fullmatch(text) else repr(text)


def _index_lines(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    duplicates: list[Problem],
    visited: set[int],
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in visited:  # an alias: its lines were indexed where it was defined
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = _key_text(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                duplicates.append(
                    Problem(
                        child, "key appears twice in the same mapping", key_node.start_mark.line + 1
                    )
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, lines, duplicates, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, f"{path}[{i}]", lines, duplicates, visited)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = _key_text(part)
            out += f".{part}" if out else part
    return out or "(top)"


def _problem(err: Any, lines: dict[str, int]) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = _path(loc)
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "unknown key (check the spelling against config.example.yaml)"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()))
        message = f"must be {op} {bound} (got {got!r})"
    elif kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected')} (got {got!r})"
    else:
        message = f"{err['msg'][:1].lower()}{err['msg'][1:]} (got {got!r})"
    return Problem(path, message, _nearest_line(path, lines))


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    """The line of ``path`` or of its closest ancestor present in the file."""
    while path not in lines:
        parent = re.sub(r"(\.[^.\[]+|\[\d+\]|^[^.\[]+)$", "", path)
        if parent == path:
            return None
        path = parent
    return lines[path]
