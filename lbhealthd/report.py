"""What one round saw and decided, as one immutable report.

The daemon publishes a :class:`RoundReport` at the end of every round; everything that shows
the daemon's view — the status document (control socket, HTTP, ``lbhealthd status``), the
metrics, the answers of the control API — reads only that report, never the live reconciler.
With the daemon down, ``lbhealthd status`` builds the same report from a read of the LB and
``state_dir`` (``running`` false, no decision), so one builder serves both.

The mappings a report holds are never changed after it is published: the reconciler replaces
its own, it does not edit them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lbhealthd.engine import PoolSettings, ServerState, governor
from lbhealthd.model import (
    Action,
    AdminState,
    Blocked,
    Decision,
    Desired,
    Member,
    Override,
    OverrideKind,
    Rule,
    Sample,
    ServerId,
)
from lbhealthd.monitors.audit import Finding
from lbhealthd.monitors.balance import BalanceReport, misweighted_text
from lbhealthd.store import OwnedEntry

__all__ = ["ConfigStatus", "LastAction", "PoolReport", "Reload", "RoundReport", "owner"]


@dataclass(frozen=True, slots=True)
class LastAction:
    """The last action decided for a server, and when (wall)."""

    action: Action
    at: float


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of one reload of the config file: when (wall), whether it was applied, the
    problems it was refused for (each with its field path), or what it changed."""

    at: float
    ok: bool
    problems: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """The config the daemon runs with: its file, when it was loaded (wall), the last reload."""

    path: str | None
    loaded_at: float
    last_reload: Reload | None = None

    @property
    def refused(self) -> Reload | None:
        """The last reload when it was refused (the daemon then runs an older config)."""
        r = self.last_reload
        return r if r is not None and not r.ok else None


@dataclass(frozen=True, slots=True)
class PoolReport:
    """One pool at the end of a round."""

    name: str
    settings: PoolSettings
    members: Mapping[ServerId, Member]  # as last read; empty if never read
    lb_error: str | None = None  # why the last read failed; None when it succeeded
    blind: bool = False
    warnings: tuple[Mapping[str, object], ...] = ()  # the engine's, for this pool
    balance: BalanceReport | None = None
    findings: tuple[Finding, ...] = ()
    # Members that not every endpoint of an HA pair lists: the pair disagrees on membership.
    partial: frozenset[ServerId] = frozenset()
    #: The endpoints of an HA pair the last read could not reach, with why.
    failed_endpoints: Mapping[str, str] = field(default_factory=dict)

    @property
    def alerts(self) -> list[dict[str, object]]:
        """The pool's open alerts: the engine's warnings, the monitors', the LB's."""
        out: list[dict[str, object]] = [dict(w) for w in self.warnings]
        if self.partial and not any(w.get("rule") == Rule.INCONSISTENT.value for w in out):
            # Without the daemon's decision (status with the daemon down), from the read.
            names = sorted(sid.server for sid in self.partial)
            out.append(
                {
                    "rule": Rule.INCONSISTENT.value,
                    "message": f"the load balancer's endpoints do not list the same servers "
                    f"({len(names)} listed by only some: {', '.join(names[:20])}"
                    f"{' ...' if len(names) > 20 else ''})",
                }
            )
        if self.balance is not None and self.balance.firing:
            out.append(
                {
                    "rule": "balance",
                    "message": self.balance.reason,
                    "culprits": list(self.balance.culprits),
                    "imbalance": self.balance.imbalance,
                }
            )
        if self.balance is not None and self.balance.misweighted:
            wrong = self.balance.misweighted
            out.append(
                {
                    "rule": "misweighted",
                    "message": f"live weights differ from expected_weights: "
                    f"{misweighted_text(wrong)}",
                    "servers": {n: {"weight": w, "expected": e} for n, (w, e) in wrong.items()},
                }
            )
        out += [
            {"rule": "audit", "message": f.message, "kind": f.kind.value} for f in self.findings
        ]
        beyond = self._beyond_cap()
        if beyond is not None and not any(
            w.get("rule") == Rule.OVERRIDE_OVER_CAP.value for w in out
        ):
            out.append(beyond)
        if self.lb_error is not None:
            out.append({"rule": "lb_unavailable", "message": self.lb_error})
        elif self.failed_endpoints:
            failed = "; ".join(f"{ep}: {err}" for ep, err in sorted(self.failed_endpoints.items()))
            out.append(
                {
                    "rule": "lb_endpoint_unavailable",
                    "message": f"{len(self.failed_endpoints)} endpoint(s) of the load balancer "
                    f"could not be read ({failed}): the pool is read from the others, and "
                    "changes are sent again until every endpoint answers",
                }
            )
        return out

    def listed(self) -> list[Member]:
        """The members every endpoint of an HA pair lists: what the caps count on."""
        return [m for sid, m in self.members.items() if sid not in self.partial]

    def budget(self) -> governor.Budget:
        """The pool's size, servers out and cap, counted as the caps count them."""
        listed = self.listed()
        return governor.budget(len(listed), sum(not m.in_rotation for m in listed), self.settings)

    def _beyond_cap(self) -> dict[str, object] | None:
        """An alert when more servers are out than the pool's caps allow, whoever took them
        out (the engine warns of its operators' overrides itself): a server HAProxy's own
        check marked down counts, as it does for the caps."""
        ps, pool = self.settings, self.budget()
        if not pool.size or (
            pool.out <= pool.max_out and pool.size - pool.out >= ps.min_in_service
        ):
            return None
        gone = [m for m in self.listed() if not m.in_rotation]
        names = ", ".join(f"{m.id.server} ({out_text(m)})" for m in gone[:20])
        return {
            "rule": "beyond_cap",
            "message": f"{pool.out} of {pool.size} servers out, beyond the pool's caps (at "
            f"most {pool.max_out} out, at least {ps.min_in_service} in service): {names}"
            f"{' ...' if len(gone) > 20 else ''}",
        }


def out_text(m: Member) -> str:
    """Why the LB has a server out of rotation, in a few words."""
    if m.admin is not AdminState.READY:
        return m.admin.value if m.imposed is None else f"{m.admin.value}, imposed by HAProxy"
    if m.imposed is not None:
        return f"{m.imposed.value}, imposed by HAProxy"
    check = f": {m.check_status}" if m.check_status else ""
    return f"{m.op.value} by HAProxy's own check{check}"


@dataclass(frozen=True, slots=True)
class RoundReport:
    """The daemon's view after a round (or the LB's and state_dir's when it is not running)."""

    pools: tuple[PoolReport, ...]
    running: bool = True
    dry_run: bool = False
    rounds: int = 0
    finished_at: float | None = None  # mono
    decision: Decision | None = None
    desired: Mapping[ServerId, Desired] = field(default_factory=dict)
    engine: Mapping[ServerId, ServerState] = field(default_factory=dict)
    samples: Mapping[ServerId, Sample] = field(default_factory=dict)
    owned: Mapping[ServerId, OwnedEntry] = field(default_factory=dict)
    overrides: Mapping[ServerId, Override] = field(default_factory=dict)
    last_action: Mapping[ServerId, LastAction] = field(default_factory=dict)
    blocked: Mapping[ServerId, Blocked] = field(default_factory=dict)
    state_since: Mapping[ServerId, float] = field(default_factory=dict)  # wall
    applied: Mapping[ServerId, AdminState] = field(default_factory=dict)  # last state set
    config: ConfigStatus | None = None  # None when the daemon is not running

    def pool(self, name: str) -> PoolReport | None:
        return next((p for p in self.pools if p.name == name), None)

    def member(self, sid: ServerId) -> Member | None:
        pool = self.pool(sid.pool)
        return None if pool is None else pool.members.get(sid)


def owner(
    member: Member, owned: Mapping[ServerId, OwnedEntry], overrides: Mapping[ServerId, Override]
) -> str | None:
    """Who holds the server's state: an operator's override, lbhealthd, an operator's hand."""
    entry = owned.get(member.id)
    override = overrides.get(member.id)
    if override is not None and override.kind is not OverrideKind.READY and entry is not None:
        return "override"
    if entry is not None:
        return "lbhealthd"
    if member.admin is not AdminState.READY:
        return "operator"
    return None
