"""Detection latency: time from the onset of overload on one server to DRAIN in HAProxy.

    python -m bench.detection_latency [--trials 20] [--round-interval 1s] [--seed 1]

A real HAProxy (the Debian package, started as a child process on 127.0.0.1) balances five
loopback API servers, all with weight 100 and no HAProxy checks. Each server answers
``GET /health`` with ``{"status": "ok", "load": L}``, where ``L`` is a number this benchmark sets.
Every trial:

1. starts the real daemon (``python -m lbhealthd run``) as a child process with a fresh
   ``state_dir`` and this pool config: probe interval 1 s (timeout 800 ms), ``load`` high 1.0 /
   low 0.6, ``fall`` 3, and ``daemon.round_interval`` from ``--round-interval`` (default 1 s, the
   daemon's own default);
2. waits for its ``started`` log line, then 2.5 s plus a random 0-1 s so that the onset falls at
   a random phase of the probe and round cadence;
3. **onset**: sets one server's reported load to 2.0 (the server changes from trial to trial);
4. **detection**: polls ``show servers state`` through ``HAProxyDriver`` every 10 ms until
   that server is in DRAIN (a trial that sees no DRAIN within 10 s counts as a miss);
5. stops the daemon by its PID, sets the load back to 0.1 and the server back to ready.

The goals, with the default ``probe.fast_interval`` (a quarter of the interval): median at most
1.4 s and worst at most 1.6 s. Also shown per trial: when
the daemon logged ``server_drained`` (its decision, before the command reached HAProxy).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web

from bench.incident_replay import machine
from lbhealthd.config import parse_config, parse_duration
from lbhealthd.demo.processes import ChildProcess
from lbhealthd.demo.report import DaemonLog
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.errors import DriverError
from lbhealthd.model import AdminState, ServerId

POOL = "api"
SERVERS = ("s1", "s2", "s3", "s4", "s5")
PROBE_INTERVAL = 1.0
FALL = 3
HIGH, LOW = 1.0, 0.6
HEALTHY_LOAD, OVERLOAD = 0.1, 2.0
POLL = 0.010  # seconds between two reads of HAProxy's server state
SETTLE = 2.5  # seconds after the daemon's `started` before the onset (plus 0-1 s random)
GIVE_UP = 10.0  # a trial without DRAIN within this many seconds is a miss


class LoadServer:
    """A loopback server whose ``/health`` reports ``load``, a value the benchmark sets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.load = HEALTHY_LOAD
        self.port = 0
        self.probes: list[tuple[float, float]] = []  # (monotonic time, load reported)
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        self.probes.append((time.monotonic(), self.load))
        return web.json_response({"status": "ok", "load": self.load})

    async def _api(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self.name})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._api)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def daemon_config(root: Path, lb_socket: str, round_interval: float) -> dict[str, object]:
    """The daemon's config for one trial (a fresh state_dir under ``root``)."""
    return {
        "daemon": {
            "state_dir": str(root / "state"),
            "control_socket": str(root / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            "log_format": "json",
            "round_interval": f"{round_interval * 1000:g}ms",
        },
        "load_balancer": {"type": "haproxy", "haproxy": {"sockets": [lb_socket], "timeout": "1s"}},
        "pools": [
            {
                "name": POOL,
                "probe": {
                    "url": "http://{address}:{port}/health",
                    "interval": f"{PROBE_INTERVAL:g}s",
                    "timeout": "800ms",
                    "load_fields": {"load": "load"},
                },
                "overload": {"load": {"high": HIGH, "low": LOW}},
                "fall": FALL,
                "rise": 3,
                "min_drain": "5s",
                "slow_start": "0s",
                "max_drained": "40%",
                "min_in_service": 2,
            }
        ],
    }


class DaemonExited(RuntimeError):
    """The daemon exited before the onset (e.g. its HTTP port was taken meanwhile)."""


@dataclass(frozen=True, slots=True)
class Trial:
    number: int
    server: str
    seen: float | None  # onset -> DRAIN seen in HAProxy, seconds; None = not within GIVE_UP
    logged: float | None  # onset -> the daemon's server_drained log line, seconds
    sent: float | None  # onset -> the daemon's lb_command (set state drain) log line, seconds
    probes: tuple[float, ...]  # onset -> each overloaded /health answer before DRAIN, seconds
    daemon_pid: int | None


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


async def _admin(driver: HAProxyDriver, server: str) -> AdminState | None:
    try:
        snap = await driver.snapshot(POOL)
    except DriverError:
        return None
    return next((m.admin for m in snap.members if m.id.server == server), None)


async def run_trial(
    number: int,
    root: Path,
    haproxy: HAProxyProcess,
    driver: HAProxyDriver,
    servers: Sequence[LoadServer],
    round_interval: float,
    rng: random.Random,
) -> Trial:
    target = servers[number % len(servers)]
    trial_dir = root / f"trial-{number:02d}"
    shutil.rmtree(trial_dir, ignore_errors=True)  # a retried trial starts afresh
    trial_dir.mkdir(parents=True)
    config_path = trial_dir / "lbhealthd.yaml"
    text = yaml.safe_dump(daemon_config(trial_dir, haproxy.socket, round_interval))
    parse_config(text, str(config_path))
    config_path.write_text(text)
    log = DaemonLog(trial_dir / "daemon.log")
    daemon = ChildProcess(
        [sys.executable, "-m", "lbhealthd", "run", "-c", str(config_path)], stderr=log.path
    )
    seen = logged = sent = None
    onset = math.inf
    try:
        await daemon.start()
        if not await _wait_started(daemon, log, 15.0):
            raise RuntimeError(f"the daemon did not start; see {log.path}")
        await asyncio.sleep(SETTLE + rng.uniform(0.0, 1.0))
        if not daemon.running:
            log.poll()
            raise DaemonExited("; ".join(log.other[-2:]) or f"see {log.path}")
        onset_wall = time.time()
        onset = time.monotonic()
        target.load = OVERLOAD
        while time.monotonic() - onset < GIVE_UP:
            if await _admin(driver, target.name) is AdminState.DRAIN:
                seen = time.monotonic() - onset
                break
            await asyncio.sleep(POLL)
        log.poll()
        drained = [
            e
            for e in log.events
            if e.name == "server_drained" and str(e.fields.get("server")) == f"{POOL}/{target.name}"
        ]
        if drained:
            logged = drained[0].wall - onset_wall
        commands = [
            e
            for e in log.events
            if e.name == "lb_command"
            and str(e.fields.get("server")) == f"{POOL}/{target.name}"
            and e.fields.get("to") == "drain"
        ]
        if commands:
            sent = commands[0].wall - onset_wall
    finally:
        pid = daemon.pid
        await daemon.stop()
        target.load = HEALTHY_LOAD
        await driver.set_state(ServerId(POOL, target.name), AdminState.READY)
    until = onset + (seen if seen is not None else GIVE_UP)
    probes = tuple(t - onset for t, load in target.probes if onset <= t <= until and load > HIGH)
    target.probes.clear()
    return Trial(number + 1, target.name, seen, logged, sent, probes, pid)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run(
    trials: int, round_interval: float, seed: int, root: Path, retries: list[str]
) -> list[Trial]:
    """Run the trials; ``retries`` collects trials restarted because the daemon exited early."""
    servers = [LoadServer(name) for name in SERVERS]
    haproxy: HAProxyProcess | None = None
    driver: HAProxyDriver | None = None
    rng = random.Random(seed)
    results: list[Trial] = []
    try:
        for s in servers:
            await s.start()
        haproxy = HAProxyProcess(
            root / "haproxy",
            {POOL: [ServerSpec(s.name, "127.0.0.1", s.port, 100) for s in servers]},
        )
        await haproxy.start()
        driver = HAProxyDriver([haproxy.socket], timeout=1.0)
        for number in range(trials):
            for attempt in range(3):
                try:
                    trial = await run_trial(
                        number, root, haproxy, driver, servers, round_interval, rng
                    )
                    break
                except DaemonExited as exc:
                    retries.append(f"trial {number + 1}, attempt {attempt + 1}: {exc}")
                    print(f"trial {number + 1}: the daemon exited: {exc}", file=sys.stderr)
            else:
                raise RuntimeError(f"trial {number + 1}: the daemon exited three times")
            results.append(trial)
            seen = "miss" if trial.seen is None else f"{trial.seen:.3f} s"
            print(f"trial {trial.number:2d} ({trial.server}): {seen}", file=sys.stderr, flush=True)
    finally:
        if driver is not None:
            await driver.close()
        if haproxy is not None:
            await haproxy.stop()
        for s in servers:
            await s.stop()
    return results


def _after_third(trial: Trial) -> float | None:
    """DRAIN seen minus the 3rd overloaded probe answer: the round wait plus the command."""
    if trial.seen is None or len(trial.probes) < FALL:
        return None
    return trial.seen - trial.probes[FALL - 1]


def _to_command(trial: Trial) -> float | None:
    """The drain command logged as sent minus the 3rd overloaded probe answer: the decision
    (on the daemon's wall clock; the answers on this process's monotonic one, the same over
    a trial's few seconds)."""
    if trial.sent is None or len(trial.probes) < FALL:
        return None
    return trial.sent - trial.probes[FALL - 1]


def report(results: Sequence[Trial], round_interval: float) -> list[str]:
    goal_median, goal_worst = 1.4, 1.6
    lines = [
        f"config: probe interval {PROBE_INTERVAL:g} s (timeout 800 ms, jitter ±10 %),"
        f" fall {FALL}, load high {HIGH:g} / low {LOW:g},"
        f" round_interval {round_interval * 1000:g} ms; HAProxy polled every {POLL * 1000:g} ms",
        "",
        "| trial | server | onset → DRAIN in HAProxy, s | onset → server_drained logged, s"
        " | overloaded probes answered at, s | DRAIN − 3rd overloaded probe, s |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for t in results:
        seen = "miss (> 10 s)" if t.seen is None else f"{t.seen:.3f}"
        logged = "-" if t.logged is None else f"{t.logged:.3f}"
        probes = ", ".join(f"{p:.2f}" for p in t.probes) or "-"
        wait = _after_third(t)
        lines.append(
            f"| {t.number} | {t.server} | {seen} | {logged} | {probes}"
            f" | {'-' if wait is None else f'{wait:.3f}'} |"
        )
    times = sorted(t.seen if t.seen is not None else math.inf for t in results)
    if not times:
        return lines
    median = statistics.median(times)
    waits = [w for w in map(_after_third, results) if w is not None]
    late = [w for w in waits if w > round_interval + 0.05]
    lines += [
        "",
        f"trials {len(times)}, misses {sum(1 for t in times if math.isinf(t))}:"
        f" median {median:.3f} s, p90 {quantile(times, 0.9):.3f} s, max {times[-1]:.3f} s,"
        f" min {times[0]:.3f} s",
    ]
    commands = sorted(c for c in map(_to_command, results) if c is not None)
    if commands:
        lines.append(
            f"3rd overloaded answer -> drain command sent (the daemon's lb_command line):"
            f" median {statistics.median(commands) * 1000:.1f} ms,"
            f" p99 {quantile(commands, 0.99) * 1000:.1f} ms, max {commands[-1] * 1000:.1f} ms"
            f" (goal p99 <= 20 ms: {'HIT' if quantile(commands, 0.99) <= 0.020 else 'MISS'})"
        )
    if waits:
        lines.append(
            f"after the 3rd overloaded probe: median {statistics.median(waits):.3f} s,"
            f" max {max(waits):.3f} s; {len(late)} of {len(waits)} trials took longer than one"
            f" round ({round_interval * 1000:g} ms) + 50 ms, i.e. the daemon did not count the"
            " 3rd sample in the round after it"
        )
    lines.append(
        f"goals: median <= {goal_median:g} s: {'HIT' if median <= goal_median else 'MISS'}"
        f" ({median:.3f} s); worst <= {goal_worst:g} s:"
        f" {'HIT' if times[-1] <= goal_worst else 'MISS'} ({times[-1]:.3f} s)"
    )
    return lines


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_latency", description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="number of trials (20)")
    parser.add_argument(
        "--round-interval", type=_duration, default=1.0, help="daemon.round_interval (1s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the onset phases (1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/out"),
        help="each trial's daemon config and log go to OUT/detection_latency (bench/out)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if find_haproxy() is None:
        print("needs the haproxy binary: sudo apt-get install haproxy", file=sys.stderr)
        return 2
    root = (args.out / "detection_latency").resolve()
    if len(str(root / "trial-00" / "control.sock")) > 100:
        parser.error(f"{args.out} is too long a path for unix sockets; choose a shorter --out")
    shutil.rmtree(root, ignore_errors=True)  # only this benchmark's own directory
    setting = machine()  # before the run: the load average of others, the code it will import
    try:
        retries: list[str] = []
        results = asyncio.run(run(args.trials, args.round_interval, args.seed, root, retries))
    except KeyboardInterrupt:
        print("interrupted; every process the benchmark started was stopped", file=sys.stderr)
        return 130
    print("\n".join(setting))
    print()
    print("\n".join(report(results, args.round_interval)))
    if retries:
        print("\ntrials restarted because the daemon exited before the onset (not counted):")
        print("\n".join(f"  {r}" for r in retries))
    print(f"\neach trial's daemon config and log: {root}/trial-NN/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
