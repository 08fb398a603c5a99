"""What the demo saw: the timeline of samples, the daemon's log events, the live table and the
final summary. Times are seconds since the load started (``t``), except ``Event.wall``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lbhealthd.demo.load import Record, failure_counts, percentile

# Daemon events shown as alerts, live and in the summary.
ALERTS = (
    "balance_alert_fired",
    "balance_alert_cleared",
    "server_drained",
    "server_restored",
    "drain_blocked",
    "audit_drift",
    "audit_clean",
    "weight_enforced",
    "operator_changed_weight",
    "operator_changed_state",
    "lb_command_failed",
    "lb_unavailable",
)


@dataclass(frozen=True, slots=True)
class ServerPoint:
    """One server at one instant: LB state and weight, its own load, p50 (ms) and traffic share
    over the last second (None when nothing was measured)."""

    name: str
    admin: str
    weight: int
    load: float
    p50_ms: float | None
    share: float | None


@dataclass(frozen=True, slots=True)
class Point:
    t: float
    rate: float
    servers: tuple[ServerPoint, ...]


@dataclass(frozen=True, slots=True)
class Phases:
    """When the overload starts, when the operator fixes the weights, when the load ends."""

    overload_at: float
    fix_at: float
    end: float

    def spans(self) -> list[tuple[str, float, float]]:
        return [
            ("baseline", 0.0, self.overload_at),
            ("overload, misweighted", self.overload_at, self.fix_at),
            ("after the fix", self.fix_at, self.end),
        ]


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the daemon's JSON log: its event name, wall time and fields."""

    name: str
    wall: float
    fields: Mapping[str, Any]


class DaemonLog:
    """Reads the daemon's JSON log incrementally; lines that are not JSON are kept as text."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self.other: list[str] = []
        self._offset = 0

    def poll(self) -> list[Event]:
        """Events logged since the last call (complete lines only)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        new = []
        for raw in data[:end].decode(errors="replace").splitlines():
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError:
                if raw.strip():
                    self.other.append(raw)
                continue
            if isinstance(doc, dict) and isinstance(doc.get("event"), str):
                new.append(Event(doc["event"], _wall(doc.get("timestamp")), doc))
        self.events += new
        return new


def _wall(stamp: object) -> float:
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            pass
    return 0.0


@dataclass
class Timeline:
    """Everything recorded during one run."""

    t0_wall: float
    phases: Phases
    servers: tuple[str, ...]
    points: list[Point] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    fixed_at: float | None = None  # when the weights were actually back to their expected values

    def t(self, event: Event) -> float:
        return event.wall - self.t0_wall

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.events if e.name in names]

    def drained_spans(self) -> dict[str, list[tuple[float, float]]]:
        """Per server, the spans between ``server_drained`` and ``server_restored`` events."""
        spans: dict[str, list[tuple[float, float]]] = {s: [] for s in self.servers}
        since: dict[str, float] = {}
        for e in self.named("server_drained", "server_restored"):
            name = str(e.fields.get("server", "")).rpartition("/")[2]
            if name not in spans:
                continue
            if e.name == "server_drained":
                since.setdefault(name, max(0.0, self.t(e)))
            elif name in since:
                spans[name].append((since.pop(name), self.t(e)))
        for name, start in since.items():
            spans[name].append((start, self.phases.end))
        return spans


def describe(event: Event) -> str:
    """One line for an alert event."""
    f = event.fields
    if event.name in ("server_drained", "server_restored"):
        verb = "drained" if event.name == "server_drained" else "restored"
        return f"{f.get('server')} {verb} ({f.get('rule')}): {f.get('reason')}"
    if event.name == "drain_blocked":
        return f"{f.get('server')} drain blocked ({f.get('rule')}): {f.get('reason')}"
    if event.name == "balance_alert_fired":
        culprits = ", ".join(str(c) for c in f.get("culprits") or ())
        return f"BALANCE ALERT fired [{culprits}]: {f.get('reason')}"
    if event.name == "balance_alert_cleared":
        return f"balance alert cleared: {f.get('reason')}"
    if event.name == "weight_enforced":
        ev = f.get("evidence") or {}
        was, now = (ev.get("from"), ev.get("to")) if isinstance(ev, dict) else (None, None)
        return f"{f.get('server')} weight {was} -> {now} (enforce_weights)"
    if event.name == "audit_drift":
        return "AUDIT drift: " + "; ".join(str(x) for x in f.get("findings") or ())
    if event.name == "audit_clean":
        return f"audit clean ({f.get('pool')})"
    if event.name.startswith("operator_changed"):
        return (
            f"{f.get('server')} {event.name}: {f.get('ours')} -> {f.get('now')} ({f.get('note')})"
        )
    return f"{event.name}: {f.get('error') or f.get('reason') or ''}"


# --- live output ---------------------------------------------------------------------------


def recent_client(
    records: Sequence[Record], now: float, span: float = 1.0
) -> tuple[int, int, float | None]:
    """Requests finished in the last ``span`` seconds: count, failed, p50 latency (s) of 2xx."""
    done = failed = 0
    ok: list[float] = []
    for r in reversed(records):
        end = r.t + r.latency
        if end < now - 3 * span:
            break
        if now - span <= end <= now:
            done += 1
            if r.failed:
                failed += 1
            elif r.status < 300:
                ok.append(r.latency)
    return done, failed, percentile(ok, 0.5)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def table(point: Point, records: Sequence[Record], phase: str) -> list[str]:
    """The live table: one row per server, then the client's view of the last second."""
    done, failed, p50 = recent_client(records, point.t)
    lines = [
        f"t={point.t:5.1f}s  {phase}  offered {point.rate:.0f} req/s",
        f"{'server':<7}{'LB state':<10}{'weight':>7}{'load':>7}{'p50':>8}{'share':>8}",
    ]
    for s in point.servers:
        p = "-" if s.p50_ms is None else f"{s.p50_ms:.0f}ms"
        share = "-" if s.share is None else f"{s.share:.0%}"
        lines.append(f"{s.name:<7}{s.admin:<10}{s.weight:>7}{s.load:>7.2f}{p:>8}{share:>8}")
    fail = f"{failed / done:.0%}" if done else "-"
    lines.append(f"last second: {done} requests finished, {fail} failed, p50 {_ms(p50)} (2xx)")
    return lines


def compact(point: Point, records: Sequence[Record]) -> str:
    """One line per second for a log or a pipe."""
    done, failed, p50 = recent_client(records, point.t)
    fail = f"{failed / done:4.0%}" if done else "   -"
    cells = " | ".join(
        f"{s.name} {s.admin[0].upper()} w{s.weight:<3} L{s.load:.1f} "
        f"{'-' if s.p50_ms is None else f'{s.p50_ms:.0f}ms':>5} "
        f"{'-' if s.share is None else f'{s.share:.0%}':>3}"
        for s in point.servers
    )
    return f"t={point.t:4.0f}s {point.rate:3.0f}/s fail {fail} p50 {_ms(p50):>5} || {cells}"


# --- the summary -----------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _latency(records: Iterable[Record]) -> str:
    ok = [r.latency for r in records if 200 <= r.status < 300]
    return f"p50 {_ms(percentile(ok, 0.5))}, p99 {_ms(percentile(ok, 0.99))}"


def _failures(records: Sequence[Record]) -> str:
    c = failure_counts(records)
    total = c["5xx"] + c["errors"] + c["dropped"]
    text = f"{c['requests']} requests, {total} failed ({_pct(total, c['requests'])}"
    if total:
        text += f": {c['5xx']} 5xx, {c['errors']} errors, {c['dropped']} dropped by the generator"
    return text + ")"


def summary(
    tl: Timeline,
    counters: Mapping[str, tuple[int, int]],
    operator: Sequence[str],
    without: str = "",
    enforce: bool = False,
) -> list[str]:
    """The end-of-run report. ``counters``: per server (served, rejected); ``without``: what
    the overload would cost without lbhealthd (an estimate); ``enforce``: the daemon ran with
    ``enforce_weights`` on."""
    ph = tl.phases
    out = ["", "=== summary ===", f"load: {_failures(tl.records)}"]
    out.append(f"latency of successful requests: {_latency(tl.records)}")
    for name, start, end in ph.spans():
        part = [r for r in tl.records if start <= r.t < end]
        out.append(f"  {name} (t={start:g}-{end:g}s): {_failures(part)}; {_latency(part)}")
    if without:
        out.append(f"  {without}")
    out.append(
        "servers (served / refused 503): "
        + ", ".join(f"{n} {s}/{r}" for n, (s, r) in counters.items())
    )
    fired = tl.named("balance_alert_fired")
    if fired:
        first = fired[0]
        delta = tl.t(first) - ph.overload_at
        when = f"{abs(delta):.1f} s {'after' if delta >= 0 else 'before'} the overload began"
        culprits = ", ".join(str(c) for c in first.fields.get("culprits") or ())
        out.append(
            f"balance alert: fired at t={tl.t(first):.1f}s ({when}) on {culprits}: "
            f"{first.fields.get('reason')}"
        )
        for e in tl.named("balance_alert_cleared"):
            out.append(f"  cleared at t={tl.t(e):.1f}s: {e.fields.get('reason')}")
    else:
        out.append("balance alert: did not fire (no balance_alert_fired event in the daemon log)")
    if enforce:
        set_back = tl.named("weight_enforced")
        out.append(f"weights set back by lbhealthd (enforce_weights on): {len(set_back)}")
        for e in set_back:
            out.append(f"  t={tl.t(e):5.1f}s  {describe(e)}")
    moves = tl.named("server_drained", "server_restored")
    out.append(f"drains and restores by lbhealthd: {len(moves)}")
    for e in moves:
        out.append(f"  t={tl.t(e):5.1f}s  {describe(e)}")
    blocked = tl.named("drain_blocked")
    if blocked:
        out.append(f"drains refused by the safety caps: {len(blocked)}")
        for e in blocked[:5]:
            out.append(f"  t={tl.t(e):5.1f}s  {describe(e)}")
    audits = tl.named("audit_drift", "audit_clean")
    out.append("config audit (daemon):" + ("" if audits else " no audit events logged"))
    for e in audits:
        out.append(f"  t={tl.t(e):5.1f}s  {describe(e)}")
    out.append("operator fix:")
    out += [f"  {line}" for line in operator]
    if tl.fixed_at is not None:
        out.append(f"  weights back to the expected values at t={tl.fixed_at:.1f}s")
    return out


def document(
    tl: Timeline, counters: Mapping[str, tuple[int, int]], pids: Mapping[str, int | None]
) -> dict[str, Any]:
    """The run as JSON (``summary.json``): counts, latencies, events with their times, PIDs."""
    c = failure_counts(tl.records)
    ok = [r.latency for r in tl.records if 200 <= r.status < 300]
    return {
        "phases": {"overload_at": tl.phases.overload_at, "fix_at": tl.phases.fix_at},
        "fixed_at": tl.fixed_at,
        "end": tl.phases.end,
        "requests": c,
        "p50_s": percentile(ok, 0.5),
        "p99_s": percentile(ok, 0.99),
        "servers": {n: {"served": s, "rejected": r} for n, (s, r) in counters.items()},
        "events": [
            {"t": round(tl.t(e), 3), **{k: v for k, v in e.fields.items() if k != "timestamp"}}
            for e in tl.events
            if e.name in ALERTS
        ],
        "pids": dict(pids),
    }
