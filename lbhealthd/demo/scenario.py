"""`lbhealthd demo`: the postmortem's outage replayed on 127.0.0.1, with lbhealthd running.

Five API servers with a capacity model (``capacity``) sit behind a real HAProxy whose backend
weights are 100,100,1,1,1: most traffic goes to s1 and s2, as in the postmortem. The real
daemon runs as a child process (``lbhealthd run``) with a generated config. An open-loop load
(``load``) goes 40 req/s for a baseline, then 200 req/s (the weights, the load over time and the
daemon's config are the ``plan``):

    s1, s2 each get 100/203 of it: ~98.5 req/s against 80 they can serve -> queues, 503s.
    s1, s2 drained: s3..s5 get ~66.7 req/s each, 83 % of what they can serve -> they cope.
    weights fixed (all 100): ~40 req/s each, 50 % -> everyone copes.

lbhealthd cannot fix the weights by itself: it drains the overloaded servers, brings them back
when they recover (they overload again under their weight of 100, and the flap backoff holds them
out longer each time), and its balance alert and config audit name the cause. Late in the run the
demo plays the operator and runs ``lbhealthd audit --fix``; the traffic then spreads evenly.

Everything binds 127.0.0.1, every phase is bounded, and every process the demo starts (HAProxy,
the daemon, the audit command) is stopped by its PID before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TextIO

import yaml

from lbhealthd.config import parse_config
from lbhealthd.demo import plot
from lbhealthd.demo.capacity import Capacity, Fleet
from lbhealthd.demo.load import LoadGenerator
from lbhealthd.demo.plan import (
    EXPECTED_WEIGHT,
    FIX_COMMAND,
    FULL,
    POOL,
    SHORT,
    WEIGHTS,
    Plan,
    daemon_config,
)
from lbhealthd.demo.processes import CONFIG_NAME, ChildProcess, prepare_out, run_command
from lbhealthd.demo.report import (
    ALERTS,
    DaemonLog,
    Event,
    Point,
    ServerPoint,
    Timeline,
    compact,
    describe,
    document,
    summary,
    table,
)
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.errors import DriverError
from lbhealthd.model import Member, PoolSnapshot

# The plan's names stay importable from here, where the benchmarks import them.
__all__ = [
    "EXPECTED_WEIGHT",
    "FIX_COMMAND",
    "FULL",
    "INSTALL_HINT",
    "POOL",
    "SHORT",
    "TICK",
    "WEIGHTS",
    "Demo",
    "Plan",
    "daemon_config",
    "run_demo",
]

TICK = 0.5  # seconds between samples of the LB and the servers
INSTALL_HINT = (
    "lbhealthd demo needs the haproxy binary (looked in PATH and /usr/sbin).\n"
    "Install it with:  sudo apt-get install haproxy"
)


class Demo:
    """One run of the scenario; ``run`` returns the exit code."""

    def __init__(
        self, out: Path, plan: Plan, stream: TextIO | None = None, enforce: bool = False
    ) -> None:
        self.out = out
        self.enforce = enforce  # the daemon runs with enforce_weights on
        self.plan = plan
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.config_path = out / CONFIG_NAME
        self.fleet = Fleet(len(WEIGHTS), Capacity())
        self.haproxy: HAProxyProcess | None = None
        self.daemon = ChildProcess(
            [sys.executable, "-m", "lbhealthd", "run", "-c", str(self.config_path)],
            stderr=out / "daemon.log",
        )
        self.log = DaemonLog(out / "daemon.log")
        self.pids: dict[str, int | None] = {}
        self.operator: list[str] = []
        self.alerts: deque[str] = deque(maxlen=8)
        self.t0 = 0.0
        self.timeline = Timeline(time.time(), plan.phases(), tuple(WEIGHTS))

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    async def run(self) -> int:
        code = 1
        driver: HAProxyDriver | None = None
        try:
            await self.fleet.start()
            self.haproxy = HAProxyProcess(
                self.out / "haproxy",
                {
                    POOL: [
                        ServerSpec(s.name, "127.0.0.1", s.port, WEIGHTS[s.name]) for s in self.fleet
                    ]
                },
                backend_options={POOL: ["timeout queue 3s", "timeout server 5s"]},
            )
            await self.haproxy.start()
            self.pids["haproxy"] = self.haproxy.pid
            driver = HAProxyDriver([self.haproxy.socket], timeout=1.0)
            doc = daemon_config(self.out, self.haproxy.socket, free_port(), enforce=self.enforce)
            text = yaml.safe_dump(doc, sort_keys=False)
            parse_config(text, str(self.config_path))
            self.config_path.write_text(text)
            self._intro()
            await self.daemon.start()
            self.pids["daemon"] = self.daemon.pid
            if not await self._daemon_started(15.0):
                self.say("the daemon did not start; its log:")
                self.say("\n".join(self.log.other[-20:]) or "(empty)")
                return 1
            await self._play(driver)
            code = 0 if self.daemon.running else 1
            if code:
                self.say("the daemon exited during the run; see its log")
        finally:
            if driver is not None:
                await driver.close()
            await self.daemon.stop()
            if self.haproxy is not None:
                await self.haproxy.stop()
            await self.fleet.stop()
        self._collect_events()
        self._finish()
        return code

    def _intro(self) -> None:
        p = self.plan
        self.say(
            f"5 API servers (capacity {Capacity().rate:.0f} req/s each) behind HAProxy "
            f"(frontend 127.0.0.1:{self.haproxy.frontend_port if self.haproxy else '?'}), "
            "weights " + ",".join(str(w) for w in WEIGHTS.values())
        )
        self.say(
            f"load: {p.baseline_rate:.0f} req/s, {p.overload_rate:.0f} req/s from "
            f"t={p.overload_at:g}s; the operator fixes the weights at t={p.fix_at:g}s; "
            f"ends at t={p.end:g}s"
        )
        if self.enforce:
            self.say("enforce_weights: on (lbhealthd sets the weights back to expected_weights)")
        self.say(f"lbhealthd config: {self.config_path}; daemon log: {self.log.path}")
        self.say()

    async def _daemon_started(self, within: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            self.log.poll()
            if any(e.name == "started" for e in self.log.events):
                return True
            if not self.daemon.running:
                return False
            await asyncio.sleep(0.1)
        return False

    async def _play(self, driver: HAProxyDriver) -> None:
        assert self.haproxy is not None
        loop = asyncio.get_running_loop()
        gen = LoadGenerator(
            f"http://127.0.0.1:{self.haproxy.frontend_port}/api/courses",
            self.plan.profile(),
            clock=loop.time,
        )
        self.timeline.records = gen.records
        self.t0 = loop.time()
        self.timeline.t0_wall = time.time()
        done = asyncio.Event()

        async def load() -> None:
            try:
                await gen.run(start=self.t0)
            finally:
                done.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(load())
            tg.create_task(self._sample(driver, done))
            tg.create_task(self._operator(driver))

    async def _sample(self, driver: HAProxyDriver, done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        history: deque[tuple[float, dict[str, int]]] = deque(maxlen=8)
        tick = 0
        while not done.is_set():
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.t0 + tick * TICK - loop.time())
            if done.is_set():
                break
            t = loop.time() - self.t0
            snap = await self._snapshot(driver)
            members = {m.id.server: m for m in snap.members} if snap else {}
            totals = {n: m.sessions_total for n, m in members.items()}
            base = next((h for h in history if t - h[0] <= 1.0 + TICK / 2), None)
            history.append((t, totals))
            point = Point(
                t,
                self.plan.profile().rate_at(t),
                tuple(
                    self._server_point(s.name, members.get(s.name), base, totals, t)
                    for s in self.fleet
                ),
            )
            self.timeline.points.append(point)
            new = [e for e in self.log.poll() if e.name in ALERTS]
            if tick % 2 == 0 or new:
                self._show(point, new, tick % 2 == 0)

    def _server_point(
        self,
        name: str,
        member: Member | None,
        base: tuple[float, dict[str, int]] | None,
        totals: dict[str, int],
        t: float,
    ) -> ServerPoint:
        server = next(s for s in self.fleet if s.name == name)
        share = None
        if base is not None:
            delta = {n: totals.get(n, 0) - base[1].get(n, 0) for n in totals}
            total = sum(delta.values())
            share = delta.get(name, 0) / total if total > 0 else None
        p50 = server.p50(self.t0 + t - 1.0)
        return ServerPoint(
            name,
            member.admin.value if member else "?",
            member.weight if member else 0,
            server.load(),
            None if p50 is None else p50 * 1000,
            share,
        )

    async def _snapshot(self, driver: HAProxyDriver) -> PoolSnapshot | None:
        try:
            return await driver.snapshot(POOL)
        except DriverError:
            return None

    def _phase(self, t: float) -> str:
        return next((n for n, a, b in self.plan.phases().spans() if a <= t < b), "end")

    def _show(self, point: Point, new: list[Event], full: bool) -> None:
        for e in new:
            self.alerts.append(f"t={self.timeline.t(e):5.1f}s  {describe(e)}")
        if self.tty:
            if full:
                lines = table(point, self.timeline.records, self._phase(point.t))
                lines += ["", "alerts from the daemon log:", *self.alerts]
                self.stream.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                self.stream.flush()
            return
        for e in new:
            self.say(f"  ! t={self.timeline.t(e):5.1f}s  {describe(e)}")
        if full:
            self.say(compact(point, self.timeline.records))

    async def _operator(self, driver: HAProxyDriver) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.t0 + self.plan.fix_at - loop.time()))
        t = loop.time() - self.t0
        verb, *flags = FIX_COMMAND
        args = [sys.executable, "-m", "lbhealthd", verb, "-c", str(self.config_path), *flags]
        shown = " ".join(["lbhealthd", verb, "-c", CONFIG_NAME, *flags])
        lines = [f"t={t:.1f}s the operator runs: {shown}"]
        code, output, pid = await run_command(args, deadline=20.0)
        self.pids["audit"] = pid
        lines.append(f"  exit {code}")
        lines += [f"  | {line}" for line in output.splitlines()[:30]]
        snap = await self._snapshot(driver)
        wrong = [
            m
            for m in (snap.members if snap else ())
            if m.weight != EXPECTED_WEIGHT and WEIGHTS.get(m.id.server) != EXPECTED_WEIGHT
        ]
        fixed = snap is not None and not wrong
        if wrong:
            names = ", ".join(f"{POOL}/{m.id.server} weight {m.weight}" for m in wrong)
            lines.append(f"  the audit command left weights unfixed: {names}")
        if fixed:
            self.timeline.fixed_at = loop.time() - self.t0
        self.operator = lines
        if self.tty:
            outcome = "weights fixed" if fixed else "weights NOT fixed"
            self.alerts.append(f"t={t:5.1f}s  operator: audit --fix exited {code}; {outcome}")
        else:
            for line in lines:
                self.say(line)

    def _collect_events(self) -> None:
        self.log.poll()
        self.timeline.events = list(self.log.events)

    def _without(self) -> str:
        """What the misweighted overload costs with no one draining (the model's arithmetic)."""
        rate, cap, total = self.plan.overload_rate, Capacity().rate, sum(WEIGHTS.values())
        offered = {n: rate * w / total for n, w in WEIGHTS.items()}
        refused = sum(max(0.0, r - cap) for r in offered.values())
        over = [n for n, r in offered.items() if r > cap]
        if not over:
            return ""
        each = " and ".join(f"{offered[n]:.1f}" for n in over)
        return (
            f"without lbhealthd (estimate): {', '.join(over)} would get {each} req/s against "
            f"{cap:.0f} they can serve: ~{refused / rate:.1%} of requests refused all phase long"
        )

    def _finish(self) -> None:
        counters = {s.name: (s.served, s.rejected) for s in self.fleet}
        if not self.timeline.points:
            return
        lines = summary(
            self.timeline, counters, self.operator, self._without(), enforce=self.enforce
        )
        for line in lines:
            self.say(line)
        doc = document(self.timeline, counters, self.pids)
        (self.out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        path = plot.render(self.timeline, self.out / "demo.png", enforce=self.enforce)
        self.say(f"plot: {path}")
        self.say(f"summary: {self.out / 'summary.json'}; daemon log: {self.log.path}")


def _short_socket_dir(out: Path) -> bool:
    """Unix socket paths are limited to 107 bytes."""
    return len(str(out / "haproxy" / "admin.sock")) < 100


def run_demo(out_dir: Path | None, short: bool, enforce: bool = False) -> int:
    """Run the demo; 0 on success, 1 if it could not complete, 2 without HAProxy or a bad --out."""
    if find_haproxy() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    out = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="lbhealthd-demo-"))
    out = out.resolve()
    try:
        prepare_out(out)
    except (FileExistsError, OSError) as exc:
        print(f"lbhealthd demo: {exc}", file=sys.stderr)
        return 2
    if not _short_socket_dir(out):
        print(f"lbhealthd demo: {out} is too long a path for unix sockets", file=sys.stderr)
        return 2
    print(f"output directory: {out}", flush=True)
    try:
        return asyncio.run(Demo(out, SHORT if short else FULL, enforce=enforce).run())
    except KeyboardInterrupt:
        print("interrupted; every process the demo started was stopped", file=sys.stderr)
        return 130
