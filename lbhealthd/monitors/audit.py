"""Config audit: a pool as the load balancer has it against the pool the operator expects.

What is checked, per pool
    - servers: with an expected set, every expected server must be present and no other one;
      without one (``servers=None``) any set is fine.
    - weights: the weight HAProxy was configured with (``initial_weight``) and the weight it
      uses now (``weight``) must both equal the expected weight (per server, else the default;
      no expected weight = not checked). The current weight is not checked on servers
      lbhealthd owns, since it may be ramping them up in slow start.
    - admin state: a server in drain or maint that lbhealthd does not own was left there by
      hand (or by an agent) and is reported; the ones lbhealthd owns are its own business.
    - endpoints: a member marked ``consistent=False`` means the endpoints of an HA pair
      disagree about it (or one of them did not answer).
    - checks: when the caller passes whether each server's health checks are on, servers
      whose checks are off are reported.

``audit_pair`` compares the views of several endpoints of one HA pair with each other.

Findings are plain values with a one-line message (``api/s3: weight 1, expected 100``) and
come out sorted: by pool, then server in natural order (s2 before s10), then kind.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from lbhealthd.model import AdminState, Member, ServerId

MAX_WEIGHT = 256
DEFAULT_KEY = "default"


class FindingKind(enum.StrEnum):
    """What is wrong; stable names for the CLI's JSON output and for metrics."""

    MISSING_SERVER = "missing_server"
    UNEXPECTED_SERVER = "unexpected_server"
    WEIGHT = "weight"
    ADMIN_STATE = "admin_state"
    CHECKS_DISABLED = "checks_disabled"
    ENDPOINTS_DISAGREE = "endpoints_disagree"


_KIND_ORDER = {kind: i for i, kind in enumerate(FindingKind)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between what is and what is expected, with a one-line message."""

    pool: str
    server: str | None  # None when the finding is about the whole pool
    kind: FindingKind
    expected: str
    actual: str
    message: str

    def __str__(self) -> str:
        return self.message


def _check_weight(weight: int, what: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"{what} must be an integer 0..{MAX_WEIGHT}, not {weight!r}")
    return weight


@dataclass(frozen=True, slots=True)
class Expectation:
    """The pool the operator expects: its servers (None = any set) and their weights."""

    pool: str
    servers: frozenset[str] | None = None
    weights: Mapping[str, int] = field(default_factory=dict)
    default_weight: int | None = None

    def __post_init__(self) -> None:
        for name, weight in self.weights.items():
            _check_weight(weight, f"expected weight of {name!r}")
        if self.default_weight is not None:
            _check_weight(self.default_weight, "default expected weight")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        if self.servers is not None:
            object.__setattr__(self, "servers", frozenset(self.servers))

    def weight_of(self, server: str) -> int | None:
        """The weight expected for ``server``: its own, else the default, else None."""
        return self.weights.get(server, self.default_weight)


def expectation_from(
    pool_name: str, servers: Iterable[str] | None, expected_weights: Mapping[str, int]
) -> Expectation:
    """Build an Expectation from a pool's config: ``expected_weights`` maps server names to
    weights, and its key ``default`` applies to every server not named."""
    weights = {k: v for k, v in expected_weights.items() if k != DEFAULT_KEY}
    return Expectation(
        pool=pool_name,
        servers=None if servers is None else frozenset(servers),
        weights=weights,
        default_weight=expected_weights.get(DEFAULT_KEY),
    )


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: s2 before s10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Findings in a stable order: pool, server (pool-wide first), kind, then message."""
    return sorted(
        findings,
        key=lambda f: (
            natural_key(f.pool),
            f.server is not None,
            natural_key(f.server or ""),
            _KIND_ORDER[f.kind],
            f.message,
            f.expected,
            f.actual,
        ),
    )


def _weight_finding(member: Member, expected: int, owned: bool) -> Finding | None:
    name = str(member.id)
    current_bad = member.weight != expected and not owned
    configured_bad = member.initial_weight != expected
    if not (current_bad or configured_bad):
        return None
    if current_bad and member.weight == member.initial_weight:
        actual = str(member.weight)
    elif current_bad:
        actual = f"{member.weight} (configured {member.initial_weight})"
    else:
        actual = f"configured {member.initial_weight} (now {member.weight})"
    return Finding(
        member.id.pool,
        member.id.server,
        FindingKind.WEIGHT,
        str(expected),
        actual,
        f"{name}: weight {actual}, expected {expected}",
    )


def audit_pool(
    snapshot_members: Sequence[Member],
    expectation: Expectation,
    owned: Collection[ServerId],
    *,
    checks: Mapping[ServerId, bool] | None = None,
) -> list[Finding]:
    """Compare a pool's live members with the expectation; see the module docstring.

    ``owned`` are the servers whose state lbhealthd set itself; ``checks`` maps a server to
    whether its health checks are on (servers absent from it are not checked).
    """
    pool = expectation.pool
    members: dict[str, Member] = {}
    for member in snapshot_members:
        if member.id.pool != pool:
            raise ValueError(f"member {member.id} is not in pool {pool!r}")
        members[member.id.server] = member
    owned_set = frozenset(owned)
    findings: list[Finding] = []

    if expectation.servers is not None:
        for name in expectation.servers - members.keys():
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.MISSING_SERVER,
                    "present",
                    "absent",
                    f"{pool}/{name}: missing from the load balancer, expected present",
                )
            )
        for name in members.keys() - expectation.servers:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.UNEXPECTED_SERVER,
                    "absent",
                    "present",
                    f"{pool}/{name}: in the load balancer, not expected",
                )
            )

    for name, member in members.items():
        is_owned = member.id in owned_set
        expected = expectation.weight_of(name)
        if expected is not None:
            weight = _weight_finding(member, expected, is_owned)
            if weight is not None:
                findings.append(weight)
        if member.admin is not AdminState.READY and not is_owned:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.ADMIN_STATE,
                    AdminState.READY.value,
                    member.admin.value,
                    f"{member.id}: admin state {member.admin.value}, expected ready "
                    "(not set by lbhealthd)",
                )
            )
        if not member.consistent:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.ENDPOINTS_DISAGREE,
                    "same on every endpoint",
                    "differs",
                    f"{member.id}: the load balancer's endpoints disagree on it "
                    "(or one did not answer)",
                )
            )
        if checks is not None and checks.get(member.id) is False:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.CHECKS_DISABLED,
                    "on",
                    "off",
                    f"{member.id}: health checks off, expected on",
                )
            )
    return sort_findings(findings)


def _differs(
    sid: ServerId, what: str, values: Mapping[str, str], endpoints: Sequence[str]
) -> Finding | None:
    if len(set(values.values())) <= 1:
        return None
    shown = [f"{ep}={values[ep]}" for ep in endpoints]
    return Finding(
        sid.pool,
        sid.server,
        FindingKind.ENDPOINTS_DISAGREE,
        shown[0],
        ", ".join(shown[1:]),
        f"{sid}: {what} differs between endpoints: {', '.join(shown)}",
    )


def audit_pair(views: Mapping[str, Sequence[Member]]) -> list[Finding]:
    """Compare the members each endpoint reports (endpoint name -> members): every server
    present on some endpoints only, or whose admin state or weight differs, with each value.

    ``expected`` holds the first endpoint's value and ``actual`` the others'.
    """
    endpoints = list(views)
    by_server: dict[ServerId, dict[str, Member]] = {}
    for endpoint, members in views.items():
        for member in members:
            by_server.setdefault(member.id, {})[endpoint] = member
    findings: list[Finding] = []
    for sid, seen in by_server.items():
        missing = [ep for ep in endpoints if ep not in seen]
        if missing:
            shown = [f"{ep}={'present' if ep in seen else 'absent'}" for ep in endpoints]
            present = ", ".join(ep for ep in endpoints if ep in seen)
            findings.append(
                Finding(
                    sid.pool,
                    sid.server,
                    FindingKind.ENDPOINTS_DISAGREE,
                    shown[0],
                    ", ".join(shown[1:]),
                    f"{sid}: present on {present} only, absent from {', '.join(missing)}",
                )
            )
            continue
        admin = _differs(
            sid, "admin state", {ep: m.admin.value for ep, m in seen.items()}, endpoints
        )
        weight = _differs(sid, "weight", {ep: str(m.weight) for ep, m in seen.items()}, endpoints)
        findings.extend(f for f in (admin, weight) if f is not None)
    return sort_findings(findings)
