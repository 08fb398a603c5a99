"""What `lbhealthd status` shows: one stable JSON document, and a table for a terminal.

The document (``version`` 1) has, per pool, the drained count against the cap, the blind flag
and the alerts, and per server: the LB's state and weight, what lbhealthd wants and who owns
it, the last decision and its reason, the load signals and probe result, any override, and how
long the server has been in its LB state. Keys are only ever added, never renamed.

The table escapes control characters in every cell and line (``printable``): a reason, an
operator's name or a probe detail cannot start a row of its own or paint the terminal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from lbhealthd.engine.reasons import over_marks
from lbhealthd.model import AdminState, Member, Override, ServerId
from lbhealthd.monitors.balance import BalanceReport
from lbhealthd.printable import printable
from lbhealthd.report import ConfigStatus, PoolReport, Reload, RoundReport, out_text, owner
from lbhealthd.times import at_text, iso_utc, until_text, who_text

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
        "until_utc": iso_utc(o.expires_at),
    }


def _lb_view(m: Member) -> dict[str, Any]:
    """What the load balancer says of a server."""
    return {
        "server": str(m.id),
        "address": m.address,
        "port": m.port,
        "lb_state": m.admin.value,
        "lb_imposed": m.imposed.value if m.imposed is not None else None,
        "lb_op": m.op.value,
        "weight": m.weight,
        "initial_weight": m.initial_weight,
        "consistent": m.consistent,
        "in_rotation": m.in_rotation,
        "out_reason": None if m.in_rotation else out_text(m),
        "lb": {
            "sessions": m.sessions,
            "queue": m.queue,
            "rate": m.session_rate,
            "sessions_total": m.sessions_total,
            "check": m.check_status,
            "agent": m.has_agent,
        },
    }


def _pool_summary(r: RoundReport, pool: PoolReport) -> dict[str, Any]:
    settings = pool.settings
    budget = pool.budget()
    size, out = budget.size, budget.out
    listed = pool.listed()
    owners = [owner(m, r.owned, r.overrides) for m in listed if not m.in_rotation]
    return {
        "name": pool.name,
        "size": size,
        "out": out,
        "in_service": size - out,
        "max_out": budget.max_out,
        "max_drained": settings.max_drained,
        "min_in_service": settings.min_in_service,
        "at_cap": budget.check(settings) is not None,
        # Out of rotation by whose hand; the rest of ``out`` is the LB's own (a failed check).
        "drained_by": {
            "lbhealthd": owners.count("lbhealthd"),
            "operator": sum(1 for o in owners if o in ("override", "operator")),
        },
        "inconsistent": bool(pool.partial),
        "not_on_every_endpoint": sorted(sid.server for sid in pool.partial),
        # In a dry run nothing is sent: the servers lbhealthd wants out are in rotation still,
        # but its caps count them as out (as they would be).
        "would_be_out": sum(
            1
            for m in listed
            if m.in_rotation
            and (want := r.desired.get(m.id)) is not None
            and want.admin is not AdminState.READY
        )
        if r.dry_run
        else 0,
    }


def _balance(report: BalanceReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "imbalance": report.imbalance,
        "firing": report.firing,
        "reason": report.reason,
        "window_sessions": report.window_sessions,
        "misweighted": {
            n: {"weight": w, "expected": e} for n, (w, e) in report.misweighted.items()
        },
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


def _server(r: RoundReport, m: Member, wall: float, mono: float) -> dict[str, Any]:
    sid = m.id
    st = r.engine.get(sid)
    want = r.desired.get(sid)
    sample = r.samples.get(sid)
    last = r.last_action.get(sid)
    blocked = r.blocked.get(sid)
    since = r.state_since.get(sid)
    return {
        **_lb_view(m),
        "desired": want.admin.value if want else None,
        "desired_weight_fraction": round(want.weight_fraction, 3) if want else None,
        "owner": owner(m, r.owned, r.overrides),
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
        else {
            "action": last.action.kind.value,
            "rule": last.action.reason.rule.value,
            "reason": last.action.reason.message,
            "at": last.at,
        },
        "blocked": None
        if blocked is None
        else {
            "action": blocked.kind.value,
            "rule": blocked.reason.rule.value,
            "reason": blocked.reason.message,
        },
        "override": _override(r.overrides.get(sid)),
        "in_state_s": None if since is None else round(wall - since, 1),
    }


def document(r: RoundReport, wall: float, mono: float) -> dict[str, Any]:
    """The status document of a round report (of a running daemon, or of the LB and
    state_dir when it is not running)."""
    pools = []
    for pool in r.pools:
        servers = [_server(r, m, wall, mono) for _, m in sorted(pool.members.items())]
        pools.append(
            {
                **_pool_summary(r, pool),
                "blind": pool.blind,
                "lb_available": pool.lb_error is None,
                "alerts": pool.alerts,
                "balance": _balance(pool.balance),
                "servers": servers,
            }
        )
    daemon: dict[str, Any] = {"running": r.running, "alerts": []}
    if r.running:
        daemon.update(
            pid=os.getpid(),
            dry_run=r.dry_run,
            rounds=r.rounds,
            last_round_age_s=None if r.finished_at is None else round(mono - r.finished_at, 3),
        )
    if r.config is not None:
        daemon["config"] = _config(r.config)
        refused = r.config.refused
        if refused is not None:
            daemon["alerts"].append(
                {
                    "rule": "config_reload",
                    "message": reload_alert(refused, r.config.loaded_at, wall),
                    "problems": list(refused.problems),
                }
            )
    return {"version": VERSION, "generated_at": wall, "daemon": daemon, "pools": pools}


def _config(c: ConfigStatus) -> dict[str, Any]:
    last = c.last_reload
    return {
        "path": c.path,
        "loaded_at": c.loaded_at,
        "loaded_at_utc": iso_utc(c.loaded_at),
        "last_reload": None
        if last is None
        else {
            "at": last.at,
            "at_utc": iso_utc(last.at),
            "ok": last.ok,
            "problems": list(last.problems),
            "changed": list(last.changed),
        },
    }


def reload_alert(refused: Reload, loaded_at: float | None, now: float | None = None) -> str:
    """The alert line of a refused reload: when, why (each problem with its field path), and
    which config runs instead."""
    now = refused.at if now is None else now
    text = f"config reload refused at {at_text(refused.at, now)}: " + "; ".join(refused.problems)
    if loaded_at is not None:
        text += f"; running the config loaded at {at_text(loaded_at, now)}"
    return text


def check_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why `status --check` exits 1, one line each; empty when all is well: the daemon not
    running, a daemon alert (a refused reload), and per pool its HAProxy unreadable, blind,
    inconsistent, fewer servers in service than ``min_in_service``, or any ALERT line."""
    out = []
    d = doc["daemon"]
    if not d.get("running"):
        out.append("the daemon is not running")
    out += [f"daemon: {a['rule']}" for a in d.get("alerts", [])]
    for pool in doc["pools"]:
        name = pool["name"]
        if not pool.get("lb_available", True):
            out.append(f"pool {name}: load balancer unreadable")
        if pool.get("blind"):
            out.append(f"pool {name}: blind")
        if pool.get("inconsistent"):
            out.append(f"pool {name}: inconsistent")
        if "size" in pool and pool["in_service"] < pool["min_in_service"]:
            out.append(f"pool {name}: below min_in_service")
        rules = sorted({str(a["rule"]) for a in pool.get("alerts", [])})
        out += [f"pool {name}: alert {rule}" for rule in rules]
    return list(dict.fromkeys(out))


def lb_text(s: Mapping[str, Any]) -> str:
    """A server's state in the LB, short: ``drain``, ``ready+maint`` (imposed), ``ready/down``."""
    return (
        str(s["lb_state"])
        + (f"+{s['lb_imposed']}" if s.get("lb_imposed") else "")
        + ("" if s["lb_op"] == "up" else f"/{s['lb_op']}")
    )


def signals_text(s: Mapping[str, Any]) -> tuple[str, str]:
    """A server's latency and other load signals from its newest sample (or what the probe
    failed with), as text; ``-`` for what is not known."""
    probe = s.get("probe") or {}
    signals = dict(probe.get("signals") or {})
    latency = signals.pop("latency_ms", None)
    shown = " ".join(f"{k}={v:g}" for k, v in sorted(signals.items()) if isinstance(v, int | float))
    if probe and probe.get("outcome") != "ok":
        shown = f"{probe['outcome']}: {probe.get('detail', '')}"
    return ("-" if latency is None else f"{latency:.0f}ms"), shown or "-"


def why_text(s: Mapping[str, Any], now: float | None = None) -> str:
    """Why a server is where it is, in one line: its override (who, until when, why), else
    what was blocked, else the last decision and its rule. The override's end is said against
    ``now`` (when the document was made, by default)."""
    if s.get("override"):
        o = s["override"]
        until = until_text(o.get("until"), time.time() if now is None else now)
        return f"{o['kind']} by {who_text(str(o['who']))}, {until}: {o['reason']}"
    if s.get("out_reason") and s.get("owner") != "lbhealthd":
        # out, and not by lbhealthd's hand: what the LB says, not an old decision of ours
        by = "set outside lbhealthd" if s.get("owner") == "operator" else "not lbhealthd's doing"
        return f"out: {s['out_reason']} ({by})"
    if s.get("blocked"):
        return f"blocked ({s['blocked']['rule']}): {s['blocked']['reason']}"
    if s.get("last_decision"):
        return f"{s['last_decision']['rule']}: {s['last_decision']['reason']}"
    return ""


def server(r: RoundReport, sid: ServerId, wall: float, mono: float) -> dict[str, Any] | None:
    """One server's entry of the document, with what its verdict is measured against: the
    pool's ``fall`` and ``rise``, and ``over``, the signals of its newest probe at or over
    their high mark (``cpu 0.95 >= 0.9``), or the probe's failure."""
    pool = r.pool(sid.pool)
    member = r.member(sid)
    if pool is None or member is None:
        return None
    entry = _server(r, member, wall, mono)
    sample = r.samples.get(sid)
    over = ""
    if sample is not None:
        failed = f"{sample.outcome.value}: {sample.detail}".rstrip(": ")
        over = over_marks(dict(sample.signals), pool.settings.marks) if sample.ok else failed
    return entry | {"fall": pool.settings.fall, "rise": pool.settings.rise, "over": over}


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
    for alert in d.get("alerts", []):
        lines.append(f"ALERT {alert['rule']}: {alert['message']}")
    now = doc.get("generated_at")
    for pool in doc["pools"]:
        lines.append("")
        head = f"pool {pool['name']}"
        if "size" in pool:
            head += (
                f": {pool['in_service']}/{pool['size']} in service, {pool['out']} out "
                f"(cap {pool['max_out']}, min_in_service {pool['min_in_service']})"
            )
            if pool.get("would_be_out"):
                head += f"  DRY RUN: {pool['would_be_out']} more would be out"
        if pool.get("blind"):
            head += "  BLIND: not draining"
        if pool.get("inconsistent"):
            head += "  INCONSISTENT: not draining or restoring"
        lines.append(head)
        for alert in pool.get("alerts", []):
            lines.append(f"  ALERT {alert['rule']}: {alert['message']}")
        header = ("server", "lb", "weight", "want", "owner", "latency", "signals", "why")
        rows: list[tuple[str, ...]] = [header]
        for s in pool["servers"]:
            latency, shown = signals_text(s)
            why = why_text(s, now)
            row = (
                s["server"].split("/", 1)[1],
                lb_text(s),
                f"{s['weight']}/{s['initial_weight']}",
                s.get("desired") or "-",
                s.get("owner") or "-",
                latency,
                shown,
                why,
            )
            rows.append(tuple(printable(str(c)) for c in row))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            lines.append(
                "  "
                + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
                + "  "
                + str(r[-1])
            )
    return "\n".join(printable(line) for line in lines)


__all__ = [
    "VERSION",
    "check_problems",
    "document",
    "lb_text",
    "reload_alert",
    "render",
    "server",
    "signals_text",
    "why_text",
]
