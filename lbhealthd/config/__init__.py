"""Configuration: YAML through PyYAML's safe loader, validated by pydantic, then converted into
the engine's plain settings.

A file is all or nothing: any problem refuses the whole file with one line per problem, each
naming its field path (``pools[0].fall``) and, where the YAML gives it, its line. Unknown keys
are refused too, so a typo cannot silently fall back to a default.

``values`` parses durations, shares, names and sockets; ``models`` is the schema and its engine
settings; ``loading`` reads and validates a file; ``problems`` words what is wrong and where.
"""

from lbhealthd.config.loading import ENV_VAR, MAX_NODES, load_config, parse_config, resolve_path
from lbhealthd.config.models import (
    BUILTIN_SIGNALS,
    BalanceAlertConfig,
    Config,
    DaemonConfig,
    ELBv2Config,
    HAProxyConfig,
    LoadBalancerConfig,
    MarksConfig,
    PoolConfig,
    ProbeConfig,
)
from lbhealthd.config.values import (
    Duration,
    SafeName,
    Share,
    check_socket,
    parse_duration,
    parse_share,
)

__all__ = [
    "BUILTIN_SIGNALS",
    "ENV_VAR",
    "MAX_NODES",
    "BalanceAlertConfig",
    "Config",
    "DaemonConfig",
    "Duration",
    "ELBv2Config",
    "HAProxyConfig",
    "LoadBalancerConfig",
    "MarksConfig",
    "PoolConfig",
    "ProbeConfig",
    "SafeName",
    "Share",
    "check_socket",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_share",
    "resolve_path",
]
