"""Soak: the real daemon probing 1,000 servers every second against a real HAProxy, for minutes.

    python -m bench.soak [--servers 1000] [--seconds 300] [--flip-every 30] [--flips 3]

- **Health servers**: one child process listens on ``--servers`` loopback ports and answers each
  GET with a keep-alive ``200 {"status":"ok","cpu":X}``, where X is read per request from memory
  shared with this process (so the run can make a server overloaded and well again).
- **HAProxy**: a real child process with one backend ``api`` of ``--servers`` servers (``s1`` ...)
  on those ports, weight 100, no checks; admin socket on a unix path.
- **The daemon**: the real ``Daemon`` (prober, scheduler, reconciler, metrics, HTTP listener and
  control socket) runs **in this process**, as it runs under ``lbhealthd run``; this process adds
  only the timers below and a structlog processor that counts events and drops them.

Probe interval 1 s (timeout 0.8 s), round interval 1 s. After a warm-up (every server probed
once, then 2 s more) the measured window lasts ``--seconds``. Every ``--flip-every`` seconds from
2 s into the window, ``--flips`` servers answer ``cpu 0.95`` for 8 s and then ``0.12`` again
(cycles that could not finish within the window are not started), so drains, restores and
slow starts happen under load. Each flipped server goes out after ``fall`` (3) overloaded
probes, comes back after ``rise`` (3) healthy ones once ``min_drain`` (5 s) has passed, and is
at full weight ``slow_start`` (5 s) later.

Reported: RSS after the warm-up, at the end and at its peak; rounds completed against the
window's length over the round interval; each round's duration (``tick`` plus the metrics
update) and its start's lateness against the previous start plus the interval; probes and
failed probes; CPU of the daemon, HAProxy and the health server; for each flip, how long after
the overload the drain came and how long after the recovery the restore came; drains of servers
that were never flipped; the most servers out at once against ``max_drained``; error events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import structlog
import yaml

from bench.probe_capacity import machine, raise_nofile_limit
from lbhealthd.config import Config, parse_config
from lbhealthd.daemon.loop import Daemon
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.model import AdminState, Sample, ServerId

POOL = "api"
NORMAL_CPU = 0.12
OVERLOADED_CPU = 0.95
OVERLOAD_FOR = 8.0  # seconds a flipped server stays overloaded
FIRST_FLIP = 2.0  # seconds into the window
FLIP_SETTLES = 20.0  # a flip's drain, hold, restore and slow start fit in this many seconds
WARMUP = 2.0  # seconds after every server has been probed once
MIB = 1024 * 1024

FALL, RISE, MIN_DRAIN, SLOW_START = 3, 3, 5.0, 5.0
MAX_DRAINED = 0.4

_SPAWN = multiprocessing.get_context("spawn")
_RECORDED = {
    "server_drained",
    "server_restored",
    "slow_start_done",
    "drain_blocked",
    "restore_blocked",
}

# --- health servers (child process) --------------------------------------------------------------

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
    b"Content-Length: %d\r\n\r\n"
)


class _HealthProtocol(asyncio.Protocol):
    """Answers every complete request head with the load its port has in shared memory now."""

    def __init__(self, index: int, cpu: MutableSequence[float]) -> None:
        self._index = index
        self._cpu = cpu
        self._transport: asyncio.Transport | None = None
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._pending + data
        requests = buffer.count(b"\r\n\r\n")
        self._pending = buffer[buffer.rfind(b"\r\n\r\n") + 4 :] if requests else buffer
        if requests and self._transport is not None:
            body = b'{"status":"ok","cpu":%.3f}' % self._cpu[self._index]
            self._transport.write((_HEAD % len(body) + body) * requests)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def serve_health(
    cpu: MutableSequence[float], share: range, lifetime: float, channel: Connection
) -> None:
    """Child process: listen on one loopback port per index of ``share``, send them back,
    serve until the parent closes ``channel`` (or dies) or ``lifetime`` seconds have passed."""
    raise_nofile_limit()
    asyncio.run(_serve(cpu, share, lifetime, channel))


async def _serve(
    cpu: MutableSequence[float], share: range, lifetime: float, channel: Connection
) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    try:
        for index in share:
            server = await loop.create_server(
                lambda index=index: _HealthProtocol(index, cpu),  # type: ignore[misc]
                "127.0.0.1",
                0,
                backlog=128,
            )
            servers.append(server)
    except OSError as exc:
        channel.send(f"health server could not listen on port {len(servers) + 1}: {exc}")
        return
    channel.send([s.sockets[0].getsockname()[1] for s in servers])
    parent_gone = asyncio.Event()
    loop.add_reader(channel.fileno(), parent_gone.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(parent_gone.wait(), lifetime)


@dataclass(frozen=True, slots=True)
class HealthServers:
    ports: tuple[int, ...]
    cpu: MutableSequence[float]  # shared with the children: index i is server s{i+1}
    pids: tuple[int, ...]


# A child holds a listening socket and an accepted connection per port, plus a few more.
_PORTS_PER_CHILD = 8000


@contextlib.contextmanager
def health_servers(count: int, lifetime: float) -> Iterator[HealthServers]:
    """Child processes serving ``count`` ports (at most 8,000 each, for the open-file limit);
    stopped by their PIDs on exit."""
    cpu = _SPAWN.RawArray("d", [NORMAL_CPU] * count)
    children: list[multiprocessing.process.BaseProcess] = []
    channels: list[Connection] = []
    try:
        for first in range(0, count, _PORTS_PER_CHILD):
            share = range(first, min(count, first + _PORTS_PER_CHILD))
            ours, theirs = _SPAWN.Pipe()
            child = _SPAWN.Process(
                target=serve_health, args=(cpu, share, lifetime, theirs), name="soak-health"
            )
            child.start()
            theirs.close()
            children.append(child)
            channels.append(ours)
        ports: list[int] = []
        for ours in channels:
            if not ours.poll(60):
                raise RuntimeError("a health server did not listen within 60 s")
            answer = ours.recv()
            if isinstance(answer, str):
                raise RuntimeError(answer)
            ports.extend(answer)
        pids = tuple(c.pid for c in children if c.pid is not None)
        yield HealthServers(tuple(ports), cpu, pids)
    finally:
        for ours in channels:
            ours.close()
        for started in children:
            started.join(5)
            if started.is_alive():
                started.terminate()
                started.join(5)
            if started.is_alive():
                started.kill()
                started.join()


# --- the daemon's configuration ---------------------------------------------------------------


def soak_config(
    socket: str, workdir: Path, round_interval: float, probe_interval: float = 1.0
) -> Config:
    """One pool of every server in the backend; 1 s probes; a drain needs 3 overloaded probes."""
    doc = {
        "daemon": {
            "state_dir": str(workdir / "state"),
            "control_socket": str(workdir / "run" / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            "round_interval": round_interval,
        },
        "load_balancer": {"type": "haproxy", "haproxy": {"sockets": [socket], "timeout": "2s"}},
        "pools": [
            {
                "name": POOL,
                "probe": {
                    "interval": probe_interval,
                    "timeout": min(0.8, 0.8 * probe_interval),
                    "load_fields": {"cpu": "cpu"},
                },
                "overload": {
                    "cpu": {"high": 0.9, "low": 0.6},
                    "latency_ms": {"high": 1000, "low": 500},
                },
                "fall": FALL,
                "rise": RISE,
                "min_drain": MIN_DRAIN,
                "flap_max_hold": 60,
                "slow_start": SLOW_START,
                "max_drained": MAX_DRAINED,
                "min_in_service": 2,
            }
        ],
    }
    return parse_config(yaml.safe_dump(doc), "soak-config")


# --- what the run records --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flip:
    """Server ``server`` answers overloaded from ``start`` to ``end`` (seconds into the window)."""

    server: str
    start: float
    end: float


def flip_schedule(servers: int, seconds: float, every: float, per_cycle: int) -> list[Flip]:
    """Cycles from FIRST_FLIP every ``every`` seconds that can settle within the window; each
    flips ``per_cycle`` servers spread across the backend, never the same one twice."""
    flips: list[Flip] = []
    start = FIRST_FLIP
    stride = max(1, servers // max(1, per_cycle * max(1, int(seconds // every) + 1)))
    while start + FLIP_SETTLES <= seconds and len(flips) + per_cycle <= servers:
        for _ in range(per_cycle):
            index = (len(flips) * stride + 7) % servers
            flips.append(Flip(f"s{index + 1}", start, start + OVERLOAD_FOR))
        start += every
    return flips


@dataclass(frozen=True, slots=True)
class FlipResult:
    flip: Flip
    drained_after: float | None  # seconds from the overload to server_drained
    restored_after: float | None  # seconds from the recovery to server_restored
    full_after: float | None  # seconds from the recovery to slow_start_done


@dataclass(frozen=True, slots=True)
class SoakResult:
    servers: int
    seconds: float  # the measured window, as it really lasted
    round_interval: float
    rss_idle: int  # this process before the daemon existed (its imports done)
    rss_start: int
    rss_end: int
    rss_peak: int
    rounds: int
    expected_rounds: int
    round_ms: tuple[float, float, float]  # p50, p99, max
    lateness_ms: tuple[float, float, float]  # p50, p99, max
    loop_lag_ms: tuple[float, float, float]  # p50, p99, max of the lag each round was given
    max_loop_lag_ms: float  # daemon.max_loop_lag: a round given more is frozen (daemon_starved)
    frozen_rounds: int  # rounds given more lag than that: their probes were ignored
    probes: int
    probe_failures: dict[str, int]
    cpu_percent: dict[str, float]  # process: % of one core over the window
    flips: tuple[FlipResult, ...]
    unexpected_drains: tuple[str, ...]
    most_out: int
    max_out: int
    errors: dict[str, int]  # error-level events by name
    tasks: tuple[int, int]  # asyncio tasks at the window's start and end
    new_tasks: dict[str, int]  # kinds of task more numerous at the end than at the start
    crashed: str | None
    wall: float  # the whole run, set-up and tear-down included

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_start

    @property
    def per_server(self) -> float:
        """Bytes the daemon holds per server at the end, above the idle process."""
        return (self.rss_end - self.rss_idle) / self.servers

    @property
    def missed_rounds(self) -> int:
        return max(0, self.expected_rounds - self.rounds)


class _Recorder:
    """A structlog processor: counts every event, keeps the few the soak reads, drops them all."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.events: list[tuple[float, str, str]] = []  # (time, event, server)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        name = str(event.get("event"))
        self.counts[name] += 1
        if method in ("error", "critical", "exception"):
            self.errors[name] += 1
        if name in _RECORDED:
            self.events.append((self.clock(), name, str(event.get("server", ""))))
        raise structlog.DropEvent


@contextlib.contextmanager
def recording_logs(clock: Callable[[], float]) -> Iterator[_Recorder]:
    """Route structlog through a _Recorder for the duration; restore the processors after."""
    recorder = _Recorder(clock)
    previous = structlog.get_config()["processors"]
    structlog.configure(processors=[recorder])
    try:
        yield recorder
    finally:
        structlog.configure(processors=previous)


@dataclass
class _Timings:
    """Round starts and durations and probe outcomes, recorded by wrappers on the daemon."""

    round_starts: list[float] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)
    probes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    recording: bool = False


def _instrument(daemon: Daemon) -> _Timings:
    """Wrap (as instance attributes) the reconciler's tick, the metrics update and the probe."""
    timings = _Timings()
    tick, observe, probe = daemon.reconciler.tick, daemon.metrics.observe_round, daemon.prober.probe
    started = [0.0]

    async def timed_tick(*args: Any, **kwargs: Any) -> Any:
        started[0] = time.monotonic()
        if timings.recording:  # the worst event-loop lag since the last round, as the daemon saw it
            timings.loop_lag.append(float(kwargs.get("starved", args[0] if args else 0.0)))
        return await tick(*args, **kwargs)

    def timed_observe(*args: Any, **kwargs: Any) -> None:
        observe(*args, **kwargs)
        if timings.recording:
            timings.round_starts.append(started[0])
            timings.round_seconds.append(time.monotonic() - started[0])

    async def counted_probe(*args: Any, **kwargs: Any) -> Sample:
        sample = await probe(*args, **kwargs)
        if timings.recording:
            timings.probes += 1
            if not sample.ok:
                timings.failures[sample.outcome.value] += 1
        return sample

    daemon.reconciler.tick = timed_tick  # type: ignore[method-assign]
    daemon.metrics.observe_round = timed_observe  # type: ignore[method-assign]
    daemon.prober.probe = counted_probe  # type: ignore[method-assign]
    return timings


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return (math.nan, math.nan, math.nan)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return (at(0.50), at(0.99), ordered[-1])


def _task_kinds() -> Counter[str]:
    """The running tasks, counted by their coroutine's name."""
    kinds: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        kinds[getattr(coro, "__qualname__", type(coro).__name__)] += 1
    return kinds


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return math.nan
    return float(times.user + times.system)


# --- the run ---------------------------------------------------------------------------------


async def soak(
    servers: int = 1000,
    seconds: float = 300.0,
    *,
    flip_every: float = 30.0,
    flips_per_cycle: int = 3,
    round_interval: float = 1.0,
    probe_interval: float = 1.0,
    say: Callable[[str], None] = lambda message: None,
) -> SoakResult:
    """Run the soak and return what it measured. Needs the haproxy binary."""
    began = time.monotonic()
    binary = find_haproxy()
    if binary is None:
        raise RuntimeError("haproxy binary not found in PATH or /usr/sbin")
    raise_nofile_limit()
    schedule = flip_schedule(servers, seconds, flip_every, flips_per_cycle)
    lifetime = seconds + 300
    with (
        tempfile.TemporaryDirectory(prefix="lbhealthd-soak-") as tmp,
        health_servers(servers, lifetime) as health,
    ):
        workdir = Path(tmp)
        pids = ", ".join(str(p) for p in health.pids)
        say(f"{servers} health ports listening (pids {pids}); starting HAProxy ...")
        backend = [
            ServerSpec(f"s{i + 1}", "127.0.0.1", port, 100) for i, port in enumerate(health.ports)
        ]
        haproxy = HAProxyProcess(workdir / "haproxy", {POOL: backend}, binary=binary)
        await haproxy.start()
        try:
            gc.collect()
            rss_idle = _rss()
            daemon = Daemon(soak_config(haproxy.socket, workdir, round_interval, probe_interval))
            with recording_logs(time.monotonic) as logs:
                timings = _instrument(daemon)
                task = asyncio.create_task(daemon.run(), name="soak daemon")
                try:
                    result = await _measure(
                        daemon, task, health, haproxy, schedule, seconds, timings, logs, say, began
                    )
                    return replace(result, rss_idle=rss_idle)
                finally:
                    daemon.stopping.set()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, timeout=10)
        finally:
            await haproxy.stop()


async def _measure(
    daemon: Daemon,
    task: asyncio.Task[int],
    health: HealthServers,
    haproxy: HAProxyProcess,
    schedule: Sequence[Flip],
    seconds: float,
    timings: _Timings,
    logs: _Recorder,
    say: Callable[[str], None],
    began: float,
) -> SoakResult:
    sids = [ServerId(POOL, f"s{i + 1}") for i in range(len(health.ports))]
    r = daemon.reconciler

    def probed() -> int:
        return sum(1 for sid in sids if daemon.scheduler.latest(sid)) if r.rounds >= 1 else 0

    # Every server probed once; after 60 s, 99 % is enough (the rest is reported): a daemon
    # too slow for its pool skips late beats, and a server can miss its first ones.
    deadline = time.monotonic() + 60
    while (done := probed()) < len(sids):
        if task.done():
            break
        if time.monotonic() > deadline:
            if done < 0.99 * len(sids):
                raise RuntimeError(
                    f"warm-up: not every server was probed within 60 s ({done:,} of "
                    f"{len(sids):,} after {r.rounds} rounds)"
                )
            say(f"warm-up: {len(sids) - done:,} servers not probed yet after 60 s; going on")
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(WARMUP)
    say(f"warm-up done; measuring {seconds:g} s with {len(schedule)} flips ...")
    index = {f"s{i + 1}": i for i in range(len(health.ports))}
    processes = {
        "daemon": psutil.Process(),
        "haproxy": psutil.Process(haproxy.pid),
        **{f"health server {i + 1}": psutil.Process(pid) for i, pid in enumerate(health.pids)},
    }
    cpu_before = {name: _cpu_seconds(p) for name, p in processes.items()}
    rss_start = rss_peak = _rss()
    tasks_at_start = _task_kinds()
    rounds_start = r.rounds
    max_out = math.floor(MAX_DRAINED * len(health.ports) + 1e-9)
    most_out = 0
    pending = sorted(
        [(f.start, f.server, OVERLOADED_CPU) for f in schedule]
        + [(f.end, f.server, NORMAL_CPU) for f in schedule]
    )
    crashed = None
    timings.recording = True
    window_start = time.monotonic()
    last_sample = window_start
    while (now := time.monotonic()) < window_start + seconds:
        while pending and pending[0][0] <= now - window_start:
            _, server, load = pending.pop(0)
            health.cpu[index[server]] = load
        if task.done():
            crashed = repr(task.exception()) if not task.cancelled() else "cancelled"
            break
        if now - last_sample >= 1.0:
            last_sample = now
            rss_peak = max(rss_peak, int(processes["daemon"].memory_info().rss))
            members = r.reader.members.get(POOL, {}).values()
            most_out = max(most_out, sum(m.admin is not AdminState.READY for m in members))
        await asyncio.sleep(0.05)
    window = time.monotonic() - window_start
    timings.recording = False
    rounds = r.rounds - rounds_start
    rss_end = _rss()
    rss_peak = max(rss_peak, rss_end)
    tasks_at_end = _task_kinds()
    cpu = {
        name: 100.0 * (_cpu_seconds(p) - cpu_before[name]) / window for name, p in processes.items()
    }
    starts = timings.round_starts
    lateness = [
        max(0.0, b - a - r.config.daemon.round_interval) for a, b in itertools.pairwise(starts)
    ]
    flipped = {f.server for f in schedule}
    flips = tuple(_flip_result(f, logs.events, window_start) for f in schedule)
    unexpected = tuple(
        sorted(
            {
                server
                for at, event, server in logs.events
                if event == "server_drained"
                and at >= window_start
                and ServerId.parse(server).server not in flipped
            }
        )
    )
    return SoakResult(
        servers=len(health.ports),
        seconds=window,
        round_interval=r.config.daemon.round_interval,
        rss_idle=0,  # set by the caller, which measured it before the daemon existed
        rss_start=rss_start,
        rss_end=rss_end,
        rss_peak=rss_peak,
        rounds=rounds,
        expected_rounds=math.floor(window / r.config.daemon.round_interval),
        round_ms=tuple(1000 * v for v in _percentiles(timings.round_seconds)),  # type: ignore[arg-type]
        lateness_ms=tuple(1000 * v for v in _percentiles(lateness)),  # type: ignore[arg-type]
        loop_lag_ms=tuple(1000 * v for v in _percentiles(timings.loop_lag)),  # type: ignore[arg-type]
        max_loop_lag_ms=1000 * r.config.daemon.max_loop_lag,
        frozen_rounds=sum(lag > r.config.daemon.max_loop_lag for lag in timings.loop_lag),
        probes=timings.probes,
        probe_failures=dict(timings.failures),
        cpu_percent=cpu,
        flips=flips,
        unexpected_drains=unexpected,
        most_out=most_out,
        max_out=max_out,
        errors=dict(logs.errors),
        tasks=(sum(tasks_at_start.values()), sum(tasks_at_end.values())),
        new_tasks=dict(tasks_at_end - tasks_at_start),
        crashed=crashed,
        wall=time.monotonic() - began,
    )


def _flip_result(
    flip: Flip, events: Sequence[tuple[float, str, str]], window_start: float
) -> FlipResult:
    name = f"{POOL}/{flip.server}"
    start, end = window_start + flip.start, window_start + flip.end

    def first(event: str, after: float) -> float | None:
        return next(
            (at - after for at, e, s in events if e == event and s == name and at >= after), None
        )

    return FlipResult(
        flip,
        drained_after=first("server_drained", start),
        restored_after=first("server_restored", end),
        full_after=first("slow_start_done", end),
    )


# --- report ----------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(result: SoakResult) -> list[str]:
    """The run as a two-column markdown table, then one line per flip."""
    r = result
    failures = sum(r.probe_failures.values())
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(r.probe_failures.items())) or "none"
    drained = [f.drained_after for f in r.flips if f.drained_after is not None]
    restored = [f.restored_after for f in r.flips if f.restored_after is not None]
    rows = [
        ("servers", f"{r.servers:,} (one backend, one pool)"),
        ("window", f"{r.seconds:.1f} s (whole run {r.wall:.1f} s)"),
        ("crashed", r.crashed or "no"),
        (
            "RSS start / end / peak",
            f"{r.rss_start / MIB:.1f} / {r.rss_end / MIB:.1f} / "
            f"{r.rss_peak / MIB:.1f} MiB (growth {r.rss_growth / MIB:+.1f} MiB)",
        ),
        (
            "RSS above the idle process, per server",
            f"{(r.rss_end - r.rss_idle) / MIB:.1f} MiB above {r.rss_idle / MIB:.1f} MiB: "
            f"{r.per_server / 1024:.2f} KB per server (goal <= 2 KB)",
        ),
        (
            "rounds completed / expected",
            f"{r.rounds} / {r.expected_rounds} "
            f"(missed {r.missed_rounds}, interval {r.round_interval:g} s)",
        ),
        ("round duration p50 / p99 / max", "{:.1f} / {:.1f} / {:.1f} ms".format(*r.round_ms)),
        (
            "round start lateness p50 / p99 / max",
            "{:.1f} / {:.1f} / {:.1f} ms".format(*r.lateness_ms),
        ),
        (
            "event-loop lag per round p50 / p99 / max",
            "{:.1f} / {:.1f} / {:.1f} ms".format(*r.loop_lag_ms)
            + f" (max_loop_lag {r.max_loop_lag_ms:.0f} ms; {r.frozen_rounds} rounds above it)",
        ),
        ("probes (per s)", f"{r.probes:,} ({r.probes / r.seconds:,.0f}/s)"),
        ("failed probes", f"{failures} ({kinds})"),
        ("CPU % of a core", ", ".join(f"{k} {v:.0f}" for k, v in r.cpu_percent.items())),
        ("flips drained / restored", f"{len(drained)} / {len(restored)} of {len(r.flips)}"),
        ("drain after overload (max)", _s(max(drained)) if drained else "-"),
        ("restore after recovery (max)", _s(max(restored)) if restored else "-"),
        ("drains of servers never flipped", ", ".join(r.unexpected_drains) or "none"),
        ("most servers out at once / max_drained", f"{r.most_out} / {r.max_out}"),
        ("error events", ", ".join(f"{k} {n}" for k, n in sorted(r.errors.items())) or "none"),
        ("asyncio tasks start / end", f"{r.tasks[0]} / {r.tasks[1]}" + _more(r.new_tasks)),
    ]
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if r.flips:
        lines += ["", "| flip | overloaded | drained after | restored after | full weight after |"]
        lines += ["|---|---|---:|---:|---:|"]
        for f in r.flips:
            lines.append(
                f"| {f.flip.server} | {f.flip.start:g}-{f.flip.end:g} s | {_s(f.drained_after)}"
                f" | {_s(f.restored_after)} | {_s(f.full_after)} |"
            )
    return lines


def _more(kinds: dict[str, int]) -> str:
    return (
        f" (more at the end: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
        if kinds
        else ""
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--servers", type=int, default=1000, help="servers in the backend (1000)")
    parser.add_argument("--seconds", type=float, default=300.0, help="measured window (300)")
    parser.add_argument("--flip-every", type=float, default=30.0, help="seconds between flips")
    parser.add_argument("--flips", type=int, default=3, help="servers flipped per cycle (3)")
    parser.add_argument(
        "--probe-interval", type=float, default=1.0, help="seconds between probes (1)"
    )
    args = parser.parse_args(argv)
    if args.servers < 1 or args.seconds <= 0:
        parser.error("--servers must be at least 1 and --seconds positive")
    result = asyncio.run(
        soak(
            args.servers,
            args.seconds,
            flip_every=args.flip_every,
            flips_per_cycle=args.flips,
            probe_interval=args.probe_interval,
            say=_say,
        )
    )
    print("\n".join(machine(server_uvloop=False)))
    print(
        f"probe interval {args.probe_interval:g} s, round interval {result.round_interval:g} s;"
        f" fall {FALL}, rise {RISE}, min_drain {MIN_DRAIN:g} s, slow_start {SLOW_START:g} s;"
        " daemon in this process, health server and HAProxy in child processes"
    )
    print()
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
