"""The one exception tree of lbhealthd.

    LbhealthdError
     ├── ConfigError            a configuration file was refused; carries one Problem per field
     ├── UnsafeConfig           a candidate HAProxy file would run code if HAProxy parsed it;
     │                          carries one Refusal per line
     ├── InvalidName            a pool or server name outside HAProxy's safe charset
     ├── StateError             a file in state_dir cannot be read or written safely
     ├── DriverError            the load balancer could not be driven
     │    ├── Unavailable       transient: socket gone, refused, timed out, throttled (retried)
     │    └── Rejected          terminal: the LB understood and refused (unknown server, bad value)
     ├── ListenerError          the daemon's HTTP listener could not be started
     ├── ControlError           the daemon's control socket could not be created
     │    └── UntrustedDaemon   the process answering on it is not one the commands trust
     ├── ControlRefused         a caller may not use the control socket (not its owner or group)
     ├── DaemonNotAnswering     the daemon is there but does not answer on the control socket
     ├── UnknownServer          a server or pool named by an operator is not in the pool/config
     ├── InvalidDuration        an override's duration is not a number of seconds in range
     ├── CapRefused             a manual drain would break max_drained or min_in_service
     ├── StillListed            a server to forget is still listed by the load balancer
     └── MissingExtra           a command needs an optional dependency that is not installed

A bad probe is data (a failed Sample), never an exception. Lower-library errors are mapped to
these at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


class LbhealthdError(Exception):
    """Base of every error lbhealthd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a configuration: where it is and what is wrong with it."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}: {self.message}{where}"


class ConfigError(LbhealthdError):
    """A configuration was refused. Nothing of it was loaded."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"{source}: {p}" for p in problems)
        super().__init__(lines)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A line a candidate HAProxy file is refused for: its number (1-based), its directive
    (empty when the line cannot be split into words) and why."""

    line: int
    directive: str
    why: str

    def __str__(self) -> str:
        what = f"{self.directive}: " if self.directive else ""
        return f"line {self.line}: {what}{self.why}"


class UnsafeConfig(LbhealthdError):
    """A candidate HAProxy configuration that would run code if HAProxy parsed it; it was not
    given to HAProxy."""

    def __init__(self, source: str, refusals: list[Refusal]) -> None:
        self.source = source
        self.refusals = refusals
        super().__init__("\n".join(f"{source}: {r}" for r in refusals))


class InvalidName(LbhealthdError, ValueError):
    """A name that must not reach the load balancer (it could inject commands)."""


class StateError(LbhealthdError):
    """A file in state_dir is unreadable, corrupt, or could not be written."""


class DriverError(LbhealthdError):
    """The load balancer could not be driven. ``endpoint`` names the socket or API."""

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: {message}" if endpoint else message)


class Unavailable(DriverError):
    """Transient: the LB did not answer (gone, refused, timed out, throttled). Worth a retry."""


class Rejected(DriverError):
    """Terminal: the LB answered and refused the command. Retrying will not help."""


class ListenerError(LbhealthdError):
    """The HTTP listener could not be started (address in use, not local, no permission)."""


class ControlError(LbhealthdError):
    """The control socket could not be created."""


class UntrustedDaemon(ControlError):
    """The process on the control socket runs as a user the on-call commands do not trust."""


class ControlRefused(LbhealthdError):
    """The control socket exists but this user may not use it."""


class DaemonNotAnswering(LbhealthdError):
    """A daemon listens on the control socket but gives no answer (flooded, stuck)."""


class UnknownServer(LbhealthdError):
    """The server is not in the pool (or the pool not in the config)."""


class InvalidDuration(LbhealthdError, ValueError):
    """An override's duration is infinite, negative, not a number, or beyond the maximum."""


class CapRefused(LbhealthdError):
    """A manual drain would break the pool's max_drained or min_in_service."""


class StillListed(LbhealthdError):
    """The load balancer still lists a server an operator asked lbhealthd to forget."""


class MissingExtra(LbhealthdError):
    """What a command needs comes with an extra that is not installed (``pip install
    'lbhealthd[EXTRA]'``). ``needed_by`` names what needs it, ``module`` what is missing."""

    def __init__(self, extra: str, module: str, needed_by: str) -> None:
        self.extra = extra
        self.module = module
        self.needed_by = needed_by
        super().__init__(f"{needed_by} needs {module}: pip install 'lbhealthd[{extra}]'")
