"""Plain value types shared by every layer: servers, samples, LB members, overrides, decisions.

Nothing here does I/O. Times are floats in seconds; which clock is documented per field
(``mono`` for the daemon's monotonic loop time, ``wall`` for Unix time that is persisted).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lbhealthd.errors import InvalidName

# HAProxy accepts [A-Za-z0-9_.:-] in proxy and server names; anything else could inject commands
# into its line-oriented runtime API (`;`, newline, space, `#`, `<<`).
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe to send to a load balancer, else raise InvalidName."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidName(
            f"invalid {what} {name!r}: only letters, digits and '-_.:' are allowed (1-64 chars)"
        )
    return name


class ServerId(tuple[str, str]):
    """A server's identity: ``POOL/SERVER`` (HAProxy's backend/server).

    A validated pair of names. It is a tuple so that hashing and comparing it, which the
    engine does many times per server and round, run at C speed.
    """

    __slots__ = ()

    def __new__(cls, pool: str, server: str) -> ServerId:
        check_name(pool, "pool name")
        check_name(server, "server name")
        return tuple.__new__(cls, (pool, server))

    def __getnewargs__(self) -> tuple[str, str]:  # pickling and copying
        return (self[0], self[1])

    @property
    def pool(self) -> str:
        return self[0]

    @property
    def server(self) -> str:
        return self[1]

    def __str__(self) -> str:
        return f"{self[0]}/{self[1]}"

    def __repr__(self) -> str:
        return f"ServerId(pool={self[0]!r}, server={self[1]!r})"

    @classmethod
    def parse(cls, text: str) -> ServerId:
        """Parse ``POOL/SERVER``; raise InvalidName when it is not of that form."""
        pool, sep, server = text.partition("/")
        if not sep:
            raise InvalidName(f"invalid server {text!r}: expected POOL/SERVER")
        return cls(pool, server)


class ProbeOutcome(enum.StrEnum):
    """How one probe ended."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    HTTP_STATUS = "http_status"
    BAD_BODY = "bad_body"
    ERROR = "error"


# AWS ELBv2 target groups: a name, or an ARN.
TG_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?")
TG_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/"
    r"[A-Za-z0-9-]{1,32}/[0-9a-f]{1,32}"
)


def check_target_group(value: str) -> str:
    """Return ``value`` if it is a target group name or ARN, else raise InvalidName."""
    if isinstance(value, str) and (TG_NAME_RE.fullmatch(value) or TG_ARN_RE.fullmatch(value)):
        return value
    raise InvalidName(
        f"invalid target group {value!r}: expected a name (1-32 letters, digits, '-') or "
        "a target group ARN"
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe of one server: its outcome, latency and load signals.

    ``signals`` maps a signal name (``latency_ms``, ``cpu``, ``lb_queue`` ...) to its value;
    a failed probe has an outcome other than OK and ``detail`` saying why.
    """

    server: ServerId
    at: float  # mono
    outcome: ProbeOutcome
    signals: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is ProbeOutcome.OK


class AdminState(enum.StrEnum):
    """The administrative state of a server in the LB (HAProxy's ready/drain/maint)."""

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class OpState(enum.StrEnum):
    """The operational state the LB's own checks give a server."""

    UP = "up"
    DOWN = "down"
    STARTING = "starting"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Member:
    """A server as the load balancer reports it, with its own traffic counters."""

    id: ServerId
    address: str
    port: int
    admin: AdminState  # the state an admin set (the runtime API, the config's `disabled`)
    op: OpState
    weight: int  # the weight set now (user weight)
    initial_weight: int  # the weight from the LB's configuration
    sessions: int = 0  # current sessions (scur)
    queue: int = 0  # queued requests (qcur)
    session_rate: int = 0  # sessions per second (rate)
    sessions_total: int = 0  # cumulative sessions (stot); deltas give traffic share
    check_status: str = ""
    has_agent: bool = False  # an agent-check can undo admin states set by anyone else
    consistent: bool = True  # every endpoint of an HA pair agrees on admin state and weight
    checks_enabled: bool | None = None  # the LB's own health checks: None = not configured
    # A state the LB imposes on top of ``admin``, which no admin set and no admin command
    # clears: HAProxy's maint or drain inherited from a tracked server (`track`), or its maint
    # while the server's address does not resolve. None when there is none.
    imposed: AdminState | None = None

    @property
    def in_rotation(self) -> bool:
        """Whether the LB sends new traffic to this server (the one definition of it)."""
        return (
            self.admin is AdminState.READY
            and self.imposed is None
            and self.op not in (OpState.DOWN, OpState.STOPPING)
        )


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """One read of a pool from the LB. ``epoch`` changes when the LB lost its runtime state.
    ``partial`` names the servers that some endpoints of an HA pair list and others do not
    (among those that answered): the endpoints disagree on the pool's membership."""

    pool: str
    members: tuple[Member, ...]
    epoch: str = ""
    partial: frozenset[str] = frozenset()
    #: Changes with every new read of the members' counters (sessions, queue, rate): a read
    #: that reused the last counters (the driver reads them at their own cadence) keeps it.
    counters: int = 0
    #: The endpoints of an HA pair that did not answer this read, with why (the read stands on
    #: the others): by endpoint.
    failed: Mapping[str, str] = field(default_factory=dict)


class OverrideKind(enum.StrEnum):
    """What an operator asked for a server."""

    DRAIN = "drain"  # out of rotation, whatever its health
    MAINT = "maint"  # out of rotation, for maintenance
    READY = "ready"  # kept in rotation: automatic drains are suppressed


@dataclass(frozen=True, slots=True)
class Override:
    """A manual decision that wins over automatic ones until it is removed or expires."""

    server: ServerId
    kind: OverrideKind
    reason: str
    who: str
    created_at: float  # wall
    expires_at: float | None = None  # wall; None = until removed

    def expired(self, wall: float) -> bool:
        return self.expires_at is not None and wall >= self.expires_at

    def as_reason(self) -> Reason:
        """The reason of what this override decides, as logs and the action log show it."""
        return Reason(
            Rule.OVERRIDE,
            f"{self.kind.value} override by {self.who}: {self.reason}",
            {
                "who": self.who,
                "reason": self.reason,
                "kind": self.kind.value,
                "expires_at": self.expires_at,
            },
        )


class ActionKind(enum.StrEnum):
    """A change of a server's desired state."""

    DRAIN = "drain"
    RESTORE = "restore"
    MAINT = "maint"
    STEP_DOWN = "step_down"  # a ramping server's weight halved instead of a drain
    SET_WEIGHT = "set_weight"  # a server's weight set back to its expected weight


class Rule(enum.StrEnum):
    """The rule that caused or blocked an action; stable names for logs and metrics."""

    FALL = "fall"  # fall consecutive overloaded or failed samples
    RISE = "rise"  # rise consecutive healthy samples, after the hold time
    HOLD = "hold"  # restore waits for min_drain (with flap backoff)
    MAX_DRAINED = "max_drained"  # pool cap on the share of servers out
    MIN_IN_SERVICE = "min_in_service"  # pool floor on servers in rotation
    BLIND = "blind"  # too many probes failed at once: the daemon fails open
    OVERRIDE = "override"  # an operator's override decided
    OVERRIDE_ENDED = "override_ended"  # an override was removed or expired
    OVERRIDE_OVER_CAP = "override_over_cap"  # an override took the pool beyond its caps
    STEP_DOWN = "step_down"  # overloaded while ramping up: its weight is halved, not drained
    STARVED = "starved"  # the daemon's event loop lagged: this round's samples are no evidence
    HAND_CHANGE = "hand_change"  # an operator changed by hand what lbhealthd had set
    INCONSISTENT = "inconsistent"  # the LB's HA endpoints list different servers in the pool
    ENFORCE_WEIGHTS = "enforce_weights"  # a live weight differs from the pool's expected one
    CAPACITY = "capacity"  # the servers left could not carry a drained server's load


@dataclass(frozen=True, slots=True)
class Reason:
    """Why: the rule, a one-line message, and the evidence (plain key/values)."""

    rule: Rule
    message: str
    evidence: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Action:
    """A change the engine decided, with its reason."""

    server: ServerId
    kind: ActionKind
    reason: Reason


@dataclass(frozen=True, slots=True)
class Blocked:
    """An action the engine wanted but did not take, with the rule that stopped it."""

    server: ServerId
    kind: ActionKind
    reason: Reason


@dataclass(frozen=True, slots=True)
class Desired:
    """What the engine wants for a server: its admin state, the share of its full weight
    (below 1.0 while slow start ramps it up), and who owns the state."""

    admin: AdminState
    weight_fraction: float = 1.0
    manual: bool = False  # set by an operator's override rather than by the daemon
    # The weight to set while it ramps, or (enforce_weights) its expected weight in rotation;
    # None = the LB's configured weight at the end of a ramp, else the weight it has.
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class ByHand:
    """What an operator changed by hand, by other means than lbhealthd, of what lbhealthd
    had set: the admin state set (None if only the weight changed), and whether a
    slow-start weight was changed."""

    admin: AdminState | None
    weight: bool = False


@dataclass(frozen=True, slots=True)
class Released:
    """A server the engine let go of because an operator changed it by hand; ``keep_in``
    asks the caller to record a keep-in override (it was put back in rotation by hand)."""

    server: ServerId
    reason: Reason
    keep_in: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one round: what every server should be, what changed and why,
    what it wanted but did not do and why, and the pools where it could not see."""

    desired: Mapping[ServerId, Desired]
    actions: tuple[Action, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    warnings: tuple[Reason, ...] = ()
    blind_pools: frozenset[str] = frozenset()
    next_wake: float | None = None  # mono; when a time-based rule may next change something
    released: tuple[Released, ...] = ()
    inconsistent_pools: frozenset[str] = frozenset()  # the LB's endpoints list different servers
