"""What the on-call commands need of a config file that does not validate.

A daemon whose reload was refused goes on running the config it accepted last, so a file
broken on disk must not lock the on-call commands out of it: reaching the daemon takes only
``daemon.control_socket`` and ``daemon.state_dir`` (whose owner the command trusts). Those
two, and the HAProxy sockets a person would use by hand, are read here from the YAML's nodes
without building the document (aliases are not expanded, so no file makes this expensive);
each is checked as the schema checks it, and one missing, unreadable or invalid takes its
default, said so by ``from_file``. Nothing here ever reaches the LB: that needs the whole,
valid config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from lbhealthd.config.models import Config, DaemonConfig, HAProxyConfig
from lbhealthd.config.values import check_socket
from lbhealthd.errors import ConfigError

__all__ = ["Broken", "Reach"]

_DEFAULTS = DaemonConfig()


@dataclass(frozen=True, slots=True)
class Reach:
    """Where the running daemon listens, and the HAProxy sockets the config names."""

    control_socket: str
    state_dir: str
    haproxy_sockets: tuple[str, ...] = ()  # empty: the file does not say (or not readably)
    lb_type: str | None = None  # None: the file does not say (or not readably)
    from_file: bool = True  # control_socket was read from the file (or given), not defaulted

    @classmethod
    def of(cls, config: Config) -> Reach:
        lb = config.load_balancer
        return cls(
            config.daemon.control_socket,
            config.daemon.state_dir,
            tuple(lb.haproxy.sockets),
            lb.type,
        )


@dataclass(frozen=True, slots=True)
class Broken:
    """A config file that was refused: where it is, what is wrong, and what could be read."""

    source: str
    problem: str  # the first problem, and how many more
    reach: Reach

    @classmethod
    def of(cls, error: ConfigError, path: str) -> Broken:
        problems = [str(p) for p in error.problems] or ["refused"]
        more = f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
        return cls(error.source, problems[0] + more, _read(path))

    def at(self, socket: str | None) -> Broken:
        """With the control socket given on the command line, if one was."""
        if not socket:
            return self
        return dataclasses.replace(
            self, reach=dataclasses.replace(self.reach, control_socket=socket, from_file=True)
        )

    @property
    def warning(self) -> str:
        return (
            f"config {self.source} is invalid ({self.problem}); talking to the running daemon "
            "anyway"
        )


def _read(path: str) -> Reach:
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        node = None
    daemon = _child(node, "daemon")
    control = _path(_scalar(_child(daemon, "control_socket")))
    state = _path(_scalar(_child(daemon, "state_dir")))
    lb = _child(node, "load_balancer")
    lb_type = _scalar(_child(lb, "type"))
    listed = _child(_child(lb, "haproxy"), "sockets")
    sockets = tuple(
        s
        for s in (
            _scalar(n) for n in (listed.value if isinstance(listed, yaml.SequenceNode) else [])
        )
        if s is not None and _is_socket(s)
    )
    if node is not None and listed is None and lb_type in (None, "haproxy"):
        sockets = tuple(HAProxyConfig().sockets)
    return Reach(
        control or _DEFAULTS.control_socket,
        state or _DEFAULTS.state_dir,
        sockets,
        lb_type if lb_type in ("haproxy", "elbv2") else None,
        from_file=control is not None,
    )


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
    return found[0] if len(found) == 1 else None  # a key given twice is not guessed at


def _scalar(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    return None


def _path(value: str | None) -> str | None:
    return value if value and "\0" not in value else None


def _is_socket(value: str) -> bool:
    try:
        check_socket(value)
    except ValueError:
        return False
    return True
