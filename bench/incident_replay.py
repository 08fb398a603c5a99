"""Incident replay: the postmortem's outage with no protection, with HAProxy's own health checks,
and with lbhealthd, on a real HAProxy, one after the other with the same load.

    python -m bench.incident_replay [--seconds 40] [--onset 8] [--fix-at 24] [--quick] [--out DIR]

Every variant runs in a fresh Python process with fresh children: five API servers with the
demo's capacity model (``lbhealthd.demo.capacity``: 4 slots of 50 ms = 80 req/s each, a queue of
16, then 503), a real HAProxy (``lbhealthd.drivers.haproxy.process``) with the postmortem's weights
100,100,1,1,1, and the demo's open-loop load (``lbhealthd.demo.load``): 40 req/s until
``--onset``, then 200 req/s until ``--seconds``. The servers' service times use the same seeds in
every variant and the request schedule is fixed, so the variants differ only in what protects the
pool:

``none``
    No checks, nothing watching: the misweighted HAProxy alone.
``haproxy``
    HAProxy's own health checks as an operator would write them: ``option httpchk GET /health``,
    ``http-check expect status 200`` and ``default-server inter 1s fall 3 rise 2 observe layer7
    error-limit 10 on-error mark-down`` (``check`` on every server). HAProxy marks a server DOWN
    after 3 failed checks, or at once after 10 consecutive layer-7 errors in live traffic (the
    503s an overloaded server returns count; 100-499, 501 and 505 do not). The servers answer
    ``/health`` with 200 at once even when overloaded, which is the postmortem's situation.
``haproxy-load``
    The same, but the check fails when the server reports load >= 1.0, the threshold lbhealthd
    uses: ``http-check expect rstring '"load": 0[.]'`` on the JSON body. This is the best HAProxy
    can do with the same signal, without hysteresis, hold times or safety caps.
``lbhealthd``
    The real daemon (``python -m lbhealthd run``) as a child process with the demo's config
    (``lbhealthd.demo.plan.daemon_config``: probes every 500 ms, load high 1.0 / low 0.6,
    fall 3, rise 3, min_drain 5 s, slow_start 5 s, max_drained 40 %). No HAProxy checks and no
    operator: the daemon alone.
``lbhealthd+fix``
    The same, and at ``--fix-at`` the operator runs ``lbhealthd audit --fix --yes`` as the demo
    does, which sets the weights back to 100. Labelled as such; skipped with ``--fix-at 0``.
``lbhealthd+enforce``
    The daemon alone with ``enforce_weights: true``: it sets the weights back to
    ``expected_weights`` (100) itself, in its first round, before the overload.

The table covers the overload phase (requests scheduled from the onset to the end): failed
requests (5xx, no answer, or not sent because 400 were outstanding), p50 and p99 latency of the
successful ones, and the baseline p99 of the same variant's healthy phase. *Time to detect* is
the first sign the variant noticed, relative to the onset: lbhealthd's first
``balance_alert_fired``, ``server_drained`` or ``drain_blocked`` log event (it can come before the
onset: the balance alert sees the misweighting itself); for HAProxy the first failed check or
DOWN in ``show stat`` / ``show servers state``, read every 100 ms. *Time to act* is the first of
those reads showing a server out of rotation (DRAIN, MAINT, DOWN or weight 0) after the onset.
*Removals* counts how often a server left rotation.

Everything listens on 127.0.0.1; every process is stopped by its PID. The PNG (failed requests and
p99 per second, per variant) and a JSON summary go to ``--out`` (default ``bench/out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lbhealthd.config import parse_config
from lbhealthd.demo.capacity import Capacity, Fleet
from lbhealthd.demo.load import LoadGenerator, Record, percentile
from lbhealthd.demo.processes import CONFIG_NAME, ChildProcess, run_command
from lbhealthd.demo.report import ALERTS, DaemonLog
from lbhealthd.demo.scenario import (
    EXPECTED_WEIGHT,
    FIX_COMMAND,
    POOL,
    WEIGHTS,
    Plan,
    daemon_config,
)
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.errors import DriverError
from lbhealthd.model import AdminState, OpState

_R = TypeVar("_R")
_SPAWN = multiprocessing.get_context("spawn")

SAMPLE = 0.1  # seconds between two reads of HAProxy's state
BACKEND = ["timeout queue 3s", "timeout server 5s"]  # as in the demo
DEFAULT_SERVER = "default-server inter 1s fall 3 rise 2 observe layer7 error-limit 10"
CHECKS = {
    "status": [
        "option httpchk GET /health",
        "http-check expect status 200",
        f"{DEFAULT_SERVER} on-error mark-down",
    ],
    "load": [
        "option httpchk GET /health",
        "http-check expect rstring '\"load\": 0[.]'",
        f"{DEFAULT_SERVER} on-error mark-down",
    ],
}
DETECTED_BY = ("balance_alert_fired", "server_drained", "drain_blocked")
HEALTHY_CHECKS = ("", "L7OK", "INI")
BAD_RATIO = 3.0  # the goal: p99 within 3x the healthy baseline
BAD_FAILURES = 1.0  # the goal: failures below 1 %


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    checks: str = ""  # a key of CHECKS, or "" for none
    daemon: bool = False
    fix: bool = False
    enforce: bool = False  # the daemon with enforce_weights on


VARIANTS = (
    Variant("none", "(a) no protection"),
    Variant("haproxy", "(b) HAProxy checks, status 200 + observe layer7", checks="status"),
    Variant("haproxy-load", "(b') HAProxy checks, load < 1 in the body", checks="load"),
    Variant("lbhealthd", "(c) lbhealthd alone", daemon=True),
    Variant("lbhealthd+fix", "(d) lbhealthd + operator's audit --fix at T", daemon=True, fix=True),
    Variant("lbhealthd+enforce", "(e) lbhealthd with enforce_weights", daemon=True, enforce=True),
)


@dataclass(frozen=True, slots=True)
class ServerState:
    name: str
    admin: str
    op: str
    weight: int
    check: str

    @property
    def out(self) -> bool:
        return self.admin != AdminState.READY or self.op == OpState.DOWN or self.weight == 0

    @property
    def failing(self) -> bool:
        return self.op != OpState.UP or self.check not in HEALTHY_CHECKS


@dataclass(frozen=True, slots=True)
class LogEvent:
    t: float  # seconds since the load started
    name: str
    fields: dict[str, Any]


@dataclass
class Outcome:
    """What one variant's run recorded (sent back from its worker process)."""

    key: str
    records: list[Record] = field(default_factory=list)
    states: list[tuple[float, tuple[ServerState, ...]]] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    served: dict[str, tuple[int, int]] = field(default_factory=dict)
    pids: dict[str, int | None] = field(default_factory=dict)
    operator: list[str] = field(default_factory=list)
    fixed_at: float | None = None
    error: str = ""


# --- one variant, in its own process -------------------------------------------------------------


def run_variant(variant: Variant, plan: Plan, root: str) -> Outcome:
    """Worker process: run ``variant`` once under ``plan``; runtime files go to ``root``."""
    return asyncio.run(_run_variant(variant, plan, Path(root)))


def _clean(root: Path) -> None:
    """Remove what an earlier run of this variant left in ``root`` (only the names we write)."""
    for name in ("haproxy", "state"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("daemon.log", "control.sock", CONFIG_NAME):
        (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


async def _wait_started(daemon: ChildProcess, log: DaemonLog, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        log.poll()
        if any(e.name == "started" for e in log.events):
            return True
        if not daemon.running:
            return False
        await asyncio.sleep(0.05)
    return False


async def _run_variant(variant: Variant, plan: Plan, root: Path) -> Outcome:
    _clean(root)
    outcome = Outcome(variant.key)
    fleet = Fleet(len(WEIGHTS), Capacity())
    haproxy: HAProxyProcess | None = None
    driver: HAProxyDriver | None = None
    daemon: ChildProcess | None = None
    log = DaemonLog(root / "daemon.log")
    t0_wall = time.time()
    try:
        await fleet.start()
        extra = "check" if variant.checks else ""
        specs = [ServerSpec(s.name, "127.0.0.1", s.port, WEIGHTS[s.name], extra) for s in fleet]
        haproxy = HAProxyProcess(
            root / "haproxy",
            {POOL: specs},
            backend_options={POOL: [*BACKEND, *CHECKS.get(variant.checks, [])]},
        )
        await haproxy.start()
        outcome.pids["haproxy"] = haproxy.pid
        driver = HAProxyDriver([haproxy.socket], timeout=1.0)
        config_path = root / CONFIG_NAME
        if variant.daemon:
            config = daemon_config(root, haproxy.socket, free_port(), enforce=variant.enforce)
            text = yaml.safe_dump(config, sort_keys=False)
            parse_config(text, str(config_path))
            config_path.write_text(text)
            daemon = ChildProcess(
                [sys.executable, "-m", "lbhealthd", "run", "-c", str(config_path)], stderr=log.path
            )
            await daemon.start()
            outcome.pids["daemon"] = daemon.pid
            if not await _wait_started(daemon, log, 15.0):
                raise RuntimeError(f"the daemon did not start; see {log.path}")
        t0_wall = await _play(variant, plan, haproxy, driver, outcome, config_path)
        if daemon is not None and not daemon.running:
            outcome.error = f"the daemon exited during the run; see {log.path}"
    except Exception as exc:  # reported in the table rather than losing the other variants
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if driver is not None:
            await driver.close()
        if daemon is not None:
            await daemon.stop()
        if haproxy is not None:
            await haproxy.stop()
        await fleet.stop()
    log.poll()
    outcome.events = [
        LogEvent(
            e.wall - t0_wall,
            e.name,
            {k: e.fields[k] for k in ("server", "rule", "reason", "culprits") if k in e.fields},
        )
        for e in log.events
        if e.name in ALERTS
    ]
    outcome.served = {s.name: (s.served, s.rejected) for s in fleet}
    return outcome


async def _play(
    variant: Variant,
    plan: Plan,
    haproxy: HAProxyProcess,
    driver: HAProxyDriver,
    outcome: Outcome,
    config_path: Path,
) -> float:
    """Run the load with the state sampler (and the operator); return the wall time of t=0."""
    loop = asyncio.get_running_loop()
    gen = LoadGenerator(
        f"http://127.0.0.1:{haproxy.frontend_port}/api/courses", plan.profile(), clock=loop.time
    )
    outcome.records = gen.records
    done = asyncio.Event()
    t0, t0_wall = loop.time(), time.time()

    async def load() -> None:
        try:
            await gen.run(start=t0)
        finally:
            done.set()

    async def sample() -> None:
        tick = 0
        while not done.is_set():
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), t0 + tick * SAMPLE - loop.time())
            with contextlib.suppress(DriverError):
                snap = await driver.snapshot(POOL)
                outcome.states.append(
                    (
                        loop.time() - t0,
                        tuple(
                            ServerState(m.id.server, m.admin, m.op, m.weight, m.check_status)
                            for m in snap.members
                        ),
                    )
                )

    async def operator() -> None:
        await asyncio.sleep(max(0.0, t0 + plan.fix_at - loop.time()))
        verb, *flags = FIX_COMMAND
        args = [sys.executable, "-m", "lbhealthd", verb, "-c", str(config_path), *flags]
        outcome.operator.append(f"t={loop.time() - t0:.1f}s: lbhealthd {' '.join(FIX_COMMAND)}")
        code, output, pid = await run_command(args, deadline=20.0)
        outcome.pids["audit"] = pid
        outcome.operator.append(f"exit {code}")
        outcome.operator += [f"| {line}" for line in output.splitlines()[:12]]
        with contextlib.suppress(DriverError):
            snap = await driver.snapshot(POOL)
            if all(m.weight == EXPECTED_WEIGHT for m in snap.members if m.admin == "ready"):
                outcome.fixed_at = loop.time() - t0

    async with asyncio.TaskGroup() as tg:
        tg.create_task(load())
        tg.create_task(sample())
        if variant.fix:
            tg.create_task(operator())
    return t0_wall


def _in_fresh_process(function: Callable[..., _R], *args: Any) -> _R:
    with ProcessPoolExecutor(max_workers=1, mp_context=_SPAWN) as pool:
        return pool.submit(function, *args).result()


# --- figures ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    variant: Variant
    requests: int
    failed: int
    p50: float | None  # seconds, 2xx in the overload phase
    p99: float | None
    baseline_p99: float | None  # seconds, 2xx before the onset
    detect: float | None  # seconds after the onset (negative: before)
    detect_by: str
    act: float | None
    removals: int
    error: str

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / self.requests if self.requests else math.nan

    @property
    def ratio(self) -> float | None:
        if self.p99 is None or not self.baseline_p99:
            return None
        return self.p99 / self.baseline_p99


def _ok(records: Iterable[Record]) -> list[float]:
    return [r.latency for r in records if 200 <= r.status < 300]


def out_spans(outcome: Outcome, end: float) -> dict[str, list[tuple[float, float]]]:
    """Per server, the spans (seconds since start, up to ``end``) the samples showed it out of
    rotation."""
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in WEIGHTS}
    since: dict[str, float] = {}
    for t, servers in outcome.states:
        if t > end:
            break
        for s in servers:
            if s.out and s.name not in since:
                since[s.name] = t
            elif not s.out and s.name in since:
                spans.setdefault(s.name, []).append((since.pop(s.name), t))
    for name, start in since.items():
        spans.setdefault(name, []).append((start, end))
    return spans


def analyse(variant: Variant, outcome: Outcome, plan: Plan) -> Row:
    onset = plan.overload_at
    over = [r for r in outcome.records if r.t >= onset]
    ok = _ok(over)
    detect: float | None = None
    detect_by = ""
    if variant.daemon:
        first = next((e for e in outcome.events if e.name in DETECTED_BY), None)
        if first is not None:
            detect, detect_by = first.t - onset, first.name
    elif variant.checks:
        for t, servers in outcome.states:
            bad = [s for s in servers if s.failing]
            if bad:
                detect = t - onset
                detect_by = f"{bad[0].name} {bad[0].op} {bad[0].check or '-'}"
                break
    act = next(
        (t - onset for t, servers in outcome.states if t >= onset and any(s.out for s in servers)),
        None,
    )
    removals = sum(len(v) for v in out_spans(outcome, plan.end).values())
    return Row(
        variant,
        len(over),
        sum(1 for r in over if r.failed),
        percentile(ok, 0.5),
        percentile(ok, 0.99),
        percentile(_ok(r for r in outcome.records if r.t < onset), 0.99),
        detect,
        detect_by,
        act,
        removals,
        outcome.error,
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:+.1f}"


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| variant | requests | failed % | p50 ms | p99 ms | baseline p99 ms | p99 ÷ baseline"
        " | time to detect s | time to act s | removals |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.1f}×"
        detect = "-" if r.detect is None else f"{_s(r.detect)} ({r.detect_by})"
        lines.append(
            f"| {r.variant.label} | {r.requests:,} | {r.failed_pct:.2f} | {_ms(r.p50)}"
            f" | {_ms(r.p99)} | {_ms(r.baseline_p99)} | {ratio} | {detect} | {_s(r.act)}"
            f" | {r.removals} |"
        )
    return lines


def verdict(rows: Sequence[Row]) -> list[str]:
    by_key = {r.variant.key: r for r in rows}
    ours = by_key.get("lbhealthd")
    if ours is None or ours.error:
        return ["goal: not evaluated (the lbhealthd variant did not run)"]
    others = [by_key[k] for k in ("none", "haproxy", "haproxy-load") if k in by_key]
    fail_ok = ours.failed_pct < BAD_FAILURES
    ratio = ours.ratio
    p99_ok = ratio is not None and ratio <= BAD_RATIO
    best_failed = min((o.failed_pct for o in others), default=math.inf)
    best_p99 = min((o.p99 or math.inf for o in others), default=math.inf)
    better = ours.failed_pct <= best_failed / 2 and (ours.p99 or math.inf) < best_p99
    lines = [
        "goal for (c) lbhealthd alone, overload phase:",
        f"  failures < {BAD_FAILURES:g} %: {ours.failed_pct:.2f} %"
        f" -> {'HIT' if fail_ok else 'MISS'}",
        f"  p99 within {BAD_RATIO:g}x the healthy baseline: {_ms(ours.p99)} ms vs"
        f" {BAD_RATIO:g} x {_ms(ours.baseline_p99)} ms"
        f" -> {'HIT' if p99_ok else 'MISS'}",
    ]
    if others:
        lines.append(
            "  clearly better than every variant without lbhealthd (at most half the failures of"
            f" the best of them, {best_failed:.2f} %, and a lower p99 than all,"
            f" {_ms(best_p99)} ms): {'HIT' if better else 'MISS'}"
        )
    else:
        lines.append("  clearly better than the others: not evaluated (none of them ran)")
    fixed = by_key.get("lbhealthd+fix")
    if fixed is not None and not fixed.error:
        lines.append(
            f"  (d) with the operator's fix: {fixed.failed_pct:.2f} % failed,"
            f" p99 {_ms(fixed.p99)} ms ({'-' if fixed.ratio is None else f'{fixed.ratio:.1f}'}x)"
        )
    return lines


def notes(variant: Variant, outcome: Outcome, row: Row, plan: Plan) -> list[str]:
    """Per variant: what left rotation when, the daemon's decisions, errors."""
    lines = [f"{variant.label}:"]
    if outcome.error:
        lines.append(f"  ERROR: {outcome.error}")
    onset = plan.overload_at
    over = [r for r in outcome.records if r.t >= onset]
    acted = onset + (row.act if row.act is not None else math.inf)
    limit = BAD_RATIO * (row.baseline_p99 or math.inf)
    slow = [r for r in over if 200 <= r.status < 300 and r.latency > limit]
    failed = [r for r in over if r.failed]
    lines.append(
        f"  overload phase: {len(failed)} failed, {len(slow)} 2xx slower than"
        f" {BAD_RATIO:g}x baseline p99 ({_ms(limit if math.isfinite(limit) else None)} ms);"
        f" before the first server left rotation: {sum(r.t < acted for r in failed)} failed,"
        f" {sum(r.t < acted for r in slow)} slow; 1 % of the phase is {len(over) / 100:.0f}"
    )
    spans = out_spans(outcome, plan.end)
    for name, items in spans.items():
        if items:
            text = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in items)
            lines.append(f"  {name} out of rotation (s since start): {text}")
    if not any(spans.values()):
        lines.append("  no server left rotation")
    for e in outcome.events:
        if e.name in ("audit_drift", "audit_clean"):
            continue
        what = e.fields.get("server") or ", ".join(str(c) for c in e.fields.get("culprits") or ())
        rule = f" ({e.fields['rule']})" if "rule" in e.fields else ""
        lines.append(f"  t={e.t:5.1f}s {e.name}{rule} {what}: {e.fields.get('reason', '')}")
    if variant.fix:
        lines += [f"  operator {line}" for line in outcome.operator]
        if outcome.fixed_at is not None:
            lines.append(f"  weights all {EXPECTED_WEIGHT} at t={outcome.fixed_at:.1f}s")
    served = ", ".join(f"{n} {s}/{r}" for n, (s, r) in outcome.served.items())
    lines.append(f"  served/refused by server: {served}")
    return lines


# --- plot -----------------------------------------------------------------------------------------

COLORS = {
    "none": "tab:red",
    "haproxy": "tab:orange",
    "haproxy-load": "tab:olive",
    "lbhealthd": "tab:blue",
    "lbhealthd+fix": "tab:green",
    "lbhealthd+enforce": "tab:purple",
}


def per_second(records: Sequence[Record], end: float) -> tuple[list[float], list[float | None]]:
    """Failed % and p99 (ms, 2xx) of the requests scheduled in each second."""
    n = math.ceil(end)
    sent = [0] * n
    failed = [0] * n
    ok: list[list[float]] = [[] for _ in range(n)]
    for r in records:
        b = int(r.t)
        if 0 <= b < n:
            sent[b] += 1
            failed[b] += r.failed
            if 200 <= r.status < 300:
                ok[b].append(r.latency * 1000)
    rate = [100.0 * f / s if s else 0.0 for f, s in zip(failed, sent, strict=True)]
    return rate, [percentile(v, 0.99) for v in ok]


def render(
    results: Sequence[tuple[Variant, Outcome, Row]], plan: Plan, show_fix: bool, path: Path
) -> Path:
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_fail, ax_p99 = fig.subplots(2, 1, sharex=True)
    xs = [b + 0.5 for b in range(math.ceil(plan.end))]
    for variant, outcome, _row in results:
        fail, p99 = per_second(outcome.records, plan.end)
        color = COLORS.get(variant.key, "black")
        ax_fail.plot(xs, fail, color=color, linewidth=1.5, label=variant.label)
        ax_p99.plot(
            xs,
            [math.nan if v is None else v for v in p99],
            color=color,
            linewidth=1.5,
            label=variant.label,
        )
    ours = next((row for v, _o, row in results if v.key == "lbhealthd"), None)
    if ours is not None and ours.baseline_p99:
        goal = BAD_RATIO * ours.baseline_p99 * 1000
        ax_p99.axhline(goal, color="0.3", linestyle="--", linewidth=0.9)
        ax_p99.text(0.3, goal, f" {BAD_RATIO:g}x healthy p99 of (c)", va="bottom", fontsize=8)
    for ax in (ax_fail, ax_p99):
        ax.axvline(plan.overload_at, color="0.3", linestyle=":", linewidth=1)
        if show_fix:
            ax.axvline(plan.fix_at, color="tab:green", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, plan.end)
    ax_fail.annotate(
        "overload begins",
        (plan.overload_at, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, -12),
        textcoords="offset points",
        fontsize=8,
    )
    if show_fix:
        ax_fail.annotate(
            "(d) audit --fix",
            (plan.fix_at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -24),
            textcoords="offset points",
            fontsize=8,
            color="tab:green",
        )
    ax_fail.set_title(
        "incident replay: HAProxy weights 100,100,1,1,1, "
        f"{plan.baseline_rate:g} then {plan.overload_rate:g} req/s"
    )
    ax_fail.set_ylabel("failed requests % (per second)")
    ax_fail.set_ylim(0, 100)
    ax_fail.legend(loc="upper right", fontsize=8)
    ax_p99.set_ylabel("p99 latency of 2xx, ms (per second)")
    ax_p99.set_yscale("log")
    ax_p99.set_xlabel("seconds since the load started (by scheduled start of each request)")
    fig.savefig(path, dpi=100)
    return path


# --- main -----------------------------------------------------------------------------------------


def machine() -> list[str]:
    """The machine the figures come from."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    haproxy = find_haproxy()
    version = "not installed"
    if haproxy is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([haproxy, "-v"], capture_output=True, timeout=10, check=False)
            version = done.stdout.decode(errors="replace").splitlines()[0]
    load1, load5, _ = os.getloadavg()
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"CPU: {model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB;"
        f" load average before the run {load1:.2f} (1 min), {load5:.2f} (5 min)",
        f"OS: {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"{version}",
        f"lbhealthd under test: {source_version()}",
    ]


def source_version() -> str:
    """The git commit of the package under test, whether it has uncommitted changes, and a
    digest of its Python sources (the daemon children import them when they start)."""
    package = Path(__file__).resolve().parent.parent / "lbhealthd"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    commit = "unknown commit"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = package.parent
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "lbhealthd"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        commit = head.stdout.decode().strip()
        if dirty.stdout.strip():
            commit += " with uncommitted changes in lbhealthd/"
    return f"{commit}, sources sha256 {digest.hexdigest()[:12]}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incident_replay", description=__doc__)
    parser.add_argument("--seconds", type=float, help="length of each variant's load (40)")
    parser.add_argument("--onset", type=float, help="when the overload begins, s (8)")
    parser.add_argument(
        "--fix-at", type=float, help="when (d)'s operator runs audit --fix, s (24); 0 = skip (d)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="20 s per variant, onset at 5 s, without (d)"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated subset of " + ",".join(v.key for v in VARIANTS) + " (all)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="output directory")
    args = parser.parse_args(argv)
    seconds: float = args.seconds or (20.0 if args.quick else 40.0)
    onset: float = args.onset if args.onset is not None else (5.0 if args.quick else 8.0)
    fix_at: float = args.fix_at if args.fix_at is not None else (0.0 if args.quick else 24.0)
    if not 0 < onset < seconds or (fix_at and not onset < fix_at < seconds):
        parser.error("need 0 < --onset < --fix-at < --seconds (or --fix-at 0)")
    if find_haproxy() is None:
        print("needs the haproxy binary: sudo apt-get install haproxy", file=sys.stderr)
        return 2
    plan = Plan(overload_at=onset, fix_at=fix_at or seconds, end=seconds)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_root = out / "incident_replay"
    longest = max((v.key for v in VARIANTS), key=len)
    if len(str(run_root / longest / "haproxy" / "admin.sock")) > 100:
        parser.error(f"{out} is too long a path for unix sockets; choose a shorter --out")
    setting = machine()  # before the run: the load average of others, the code it will import
    variants = [v for v in VARIANTS if fix_at or not v.fix]
    if args.variants:
        wanted = {k.strip() for k in args.variants.split(",") if k.strip()}
        unknown = wanted - {v.key for v in VARIANTS}
        if unknown:
            parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
        variants = [v for v in variants if v.key in wanted]
    results: list[tuple[Variant, Outcome, Row]] = []
    for variant in variants:
        _say(f"{variant.label}: {seconds:g} s ...")
        outcome = _in_fresh_process(run_variant, variant, plan, str(run_root / variant.key))
        if outcome.error:
            _say(f"  error: {outcome.error}")
        results.append((variant, outcome, analyse(variant, outcome, plan)))
    rows = [row for _v, _o, row in results]
    png = render(results, plan, bool(fix_at), out / "incident_replay.png")
    summary = {
        "plan": {"onset": onset, "fix_at": fix_at or None, "end": seconds},
        "rows": [
            {
                "variant": r.variant.key,
                "requests": r.requests,
                "failed": r.failed,
                "p50_ms": r.p50 and r.p50 * 1000,
                "p99_ms": r.p99 and r.p99 * 1000,
                "baseline_p99_ms": r.baseline_p99 and r.baseline_p99 * 1000,
                "detect_s": r.detect,
                "detect_by": r.detect_by,
                "act_s": r.act,
                "removals": r.removals,
                "error": r.error,
            }
            for r in rows
        ],
        "per_second": {
            v.key: dict(zip(("failed_pct", "p99_ms"), per_second(o.records, plan.end), strict=True))
            for v, o, _r in results
        },
        "pids": {v.key: o.pids for v, o, _r in results},
    }
    (out / "incident_replay.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(setting))
    print(
        f"load: {plan.baseline_rate:g} req/s until t={onset:g}s, then {plan.overload_rate:g} req/s"
        f" until t={seconds:g}s; 5 servers of {Capacity().rate:g} req/s, weights "
        + ",".join(str(w) for w in WEIGHTS.values())
        + (f"; (d)'s operator fixes the weights at t={fix_at:g}s" if fix_at else "")
    )
    print("columns from requests to time to act: the overload phase (scheduled at t >= onset)")
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(verdict(rows)))
    print()
    for variant, outcome, row in results:
        print("\n".join(notes(variant, outcome, row, plan)))
    print()
    print(f"plot: {png}")
    print(f"summary: {out / 'incident_replay.json'}; logs under {run_root}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
