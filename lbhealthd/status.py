"""What `lbhealthd status` shows: one stable JSON document, and a table for a terminal.

The document (``version`` 1) has, per pool, the drained count against the cap, the blind flag
and the alerts, and per server: the LB's state and weight, what lbhealthd wants and who owns
it, the last decision and its reason, the load signals and probe result, any override, and how
long the server has been in its LB state. Keys are only ever added, never renamed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lbhealthd.config import Config
from lbhealthd.daemon.reconciler import Reconciler
from lbhealthd.engine import governor
from lbhealthd.model import AdminState, Member, OpState, Override, OverrideKind, ServerId
from lbhealthd.monitors.balance import BalanceReport
from lbhealthd.store import OwnedEntry

VERSION = 1


def _override(o: Override | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {
        "kind": o.kind.value,
        "reason": o.reason,
        "who": o.who,
        "since": o.created_at,
        "until": o.expires_at,
    }


def _owner(
    sid: ServerId,
    member: Member,
    owned: Mapping[ServerId, OwnedEntry],
    overrides: Mapping[ServerId, Override],
) -> str | None:
    entry = owned.get(sid)
    override = overrides.get(sid)
    if override is not None and override.kind is not OverrideKind.READY and entry is not None:
        return "override"
    if entry is not None:
        return "lbhealthd"
    if member.admin is not AdminState.READY:
        return "operator"
    return None


def _lb_view(m: Member) -> dict[str, Any]:
    """What the load balancer says of a server: the part of its entry every path shares."""
    return {
        "server": str(m.id),
        "address": m.address,
        "port": m.port,
        "lb_state": m.admin.value,
        "lb_op": m.op.value,
        "weight": m.weight,
        "initial_weight": m.initial_weight,
        "consistent": m.consistent,
        "lb": {
            "sessions": m.sessions,
            "queue": m.queue,
            "rate": m.session_rate,
            "sessions_total": m.sessions_total,
            "check": m.check_status,
            "agent": m.has_agent,
        },
    }


def _in_rotation(member: Member) -> bool:
    return member.admin is AdminState.READY and member.op not in (OpState.DOWN, OpState.STOPPING)


def _pool_summary(config: Config, pool: str, members: Sequence[Member]) -> dict[str, Any]:
    settings = config.engine_settings().pools[pool]
    size = len(members)
    out = sum(1 for m in members if not _in_rotation(m))
    cap = math.floor(settings.max_drained * size + 1e-9)
    return {
        "name": pool,
        "size": size,
        "out": out,
        "in_service": size - out,
        "max_out": cap,
        "max_drained": settings.max_drained,
        "min_in_service": settings.min_in_service,
        "at_cap": governor.budget(size, out, settings).check(settings) is not None,
    }


def _balance(report: BalanceReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "imbalance": report.imbalance,
        "firing": report.firing,
        "reason": report.reason,
        "window_sessions": report.window_sessions,
        "shares": {
            name: {
                "actual": round(v.actual, 4),
                "intended": round(v.intended, 4),
                "ratio": round(v.ratio, 3),
                "sessions": v.sessions,
            }
            for name, v in report.shares.items()
        },
    }


def from_daemon(r: Reconciler, wall: float, mono: float) -> dict[str, Any]:
    """The status document of a running daemon."""
    decision = r.decision
    pools = []
    for pool_cfg in r.config.pools:
        members = r.members.get(pool_cfg.name, {})
        summary = _pool_summary(r.config, pool_cfg.name, list(members.values()))
        alerts: list[dict[str, object]] = []
        if decision is not None:
            alerts += [
                {"rule": w.rule.value, "message": w.message}
                for w in decision.warnings
                if w.evidence.get("pool") == pool_cfg.name
            ]
        alerts += r.watch.alerts(pool_cfg.name)
        report = r.watch.pools[pool_cfg.name].report if pool_cfg.name in r.watch.pools else None
        if pool_cfg.name in r.unavailable:
            alerts.append({"rule": "lb_unavailable", "message": r.unavailable[pool_cfg.name]})
        servers = []
        for sid, m in sorted(members.items()):
            st = r.state.servers.get(sid)
            want = decision.desired.get(sid) if decision else None
            sample = r.scheduler.latest(sid)
            last = r.last_action.get(sid)
            blocked = r.last_blocked.get(sid)
            since = r.state_since.get(sid)
            servers.append(
                {
                    **_lb_view(m),
                    "desired": want.admin.value if want else None,
                    "desired_weight_fraction": round(want.weight_fraction, 3) if want else None,
                    "owner": _owner(sid, m, r.owned, r.overrides),
                    "phase": st.phase.value if st else None,
                    "verdict": st.verdict.value if st and st.verdict else None,
                    "bad": st.bad if st else 0,
                    "good": st.good if st else 0,
                    "probe": None
                    if sample is None
                    else {
                        "outcome": sample.outcome.value,
                        "detail": sample.detail,
                        "signals": dict(sample.signals),
                        "age_s": round(mono - sample.at, 3),
                    },
                    "last_decision": None
                    if last is None
                    else {"action": last[0], "rule": last[1], "reason": last[2], "at": last[3]},
                    "blocked": None
                    if blocked is None
                    else {"action": blocked[0], "rule": blocked[1], "reason": blocked[2]},
                    "override": _override(r.overrides.get(sid)),
                    "in_state_s": None if since is None else round(wall - since[1], 1),
                }
            )
        pools.append(
            {
                **summary,
                "blind": bool(decision and pool_cfg.name in decision.blind_pools),
                "lb_available": pool_cfg.name not in r.unavailable,
                "alerts": alerts,
                "balance": _balance(report),
                "servers": servers,
            }
        )
    return {
        "version": VERSION,
        "daemon": {
            "running": True,
            "pid": os.getpid(),
            "dry_run": r.dry_run,
            "rounds": r.rounds,
            "last_round_age_s": None
            if r.last_round_at is None
            else round(mono - r.last_round_at, 3),
        },
        "pools": pools,
    }


def from_lb(
    config: Config,
    snapshots: Mapping[str, Sequence[Member] | str],
    owned: Mapping[ServerId, OwnedEntry],
    overrides: Mapping[ServerId, Override],
) -> dict[str, Any]:
    """The status document when the daemon is not running: the LB and state_dir only.
    ``snapshots`` maps a pool to its members, or to the error that kept it from being read."""
    pools = []
    for pool_cfg in config.pools:
        got = snapshots.get(pool_cfg.name, "not read")
        if isinstance(got, str):
            pools.append(
                {
                    "name": pool_cfg.name,
                    "lb_available": False,
                    "blind": False,
                    "alerts": [{"rule": "lb_unavailable", "message": got}],
                    "servers": [],
                }
            )
            continue
        servers = [
            {
                **_lb_view(m),
                "desired": None,
                "desired_weight_fraction": None,
                "owner": _owner(m.id, m, owned, overrides),
                "phase": None,
                "verdict": None,
                "bad": 0,
                "good": 0,
                "probe": None,
                "last_decision": None,
                "blocked": None,
                "override": _override(overrides.get(m.id)),
                "in_state_s": None,
            }
            for m in sorted(got, key=lambda m: m.id)
        ]
        pools.append(
            {
                **_pool_summary(config, pool_cfg.name, got),
                "blind": False,
                "lb_available": True,
                "alerts": [],
                "servers": servers,
            }
        )
    return {"version": VERSION, "daemon": {"running": False}, "pools": pools}


def render(doc: Mapping[str, Any]) -> str:
    """A table for a person at a terminal."""
    lines = []
    d = doc["daemon"]
    if d.get("running"):
        lines.append(
            f"daemon: running (pid {d['pid']}, {d['rounds']} rounds"
            f"{', DRY RUN' if d.get('dry_run') else ''})"
        )
    else:
        lines.append("daemon: NOT RUNNING (showing the load balancer and state_dir only)")
    for pool in doc["pools"]:
        lines.append("")
        head = f"pool {pool['name']}"
        if "size" in pool:
            head += (
                f": {pool['in_service']}/{pool['size']} in service, {pool['out']} out "
                f"(cap {pool['max_out']}, min_in_service {pool['min_in_service']})"
            )
        if pool.get("blind"):
            head += "  BLIND: not draining"
        lines.append(head)
        for alert in pool.get("alerts", []):
            lines.append(f"  ALERT {alert['rule']}: {alert['message']}")
        header = ("server", "lb", "weight", "want", "owner", "latency", "signals", "why")
        rows = [header]
        for s in pool["servers"]:
            probe = s.get("probe") or {}
            signals = dict(probe.get("signals") or {})
            latency = signals.pop("latency_ms", None)
            shown = " ".join(
                f"{k}={v:g}" for k, v in sorted(signals.items()) if isinstance(v, int | float)
            )
            if probe and probe.get("outcome") != "ok":
                shown = f"{probe['outcome']}: {probe.get('detail', '')}"
            why = ""
            if s.get("override"):
                o = s["override"]
                why = f"{o['kind']} by {o['who']}: {o['reason']}"
            elif s.get("blocked"):
                why = f"blocked ({s['blocked']['rule']}): {s['blocked']['reason']}"
            elif s.get("last_decision"):
                why = f"{s['last_decision']['rule']}: {s['last_decision']['reason']}"
            rows.append(
                (
                    s["server"].split("/", 1)[1],
                    s["lb_state"] + ("" if s["lb_op"] == "up" else f"/{s['lb_op']}"),
                    f"{s['weight']}/{s['initial_weight']}",
                    s.get("desired") or "-",
                    s.get("owner") or "-",
                    "-" if latency is None else f"{latency:.0f}ms",
                    shown or "-",
                    why,
                )
            )
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            lines.append(
                "  "
                + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
                + "  "
                + str(r[-1])
            )
    return "\n".join(lines)


__all__ = ["VERSION", "from_daemon", "from_lb", "render"]
