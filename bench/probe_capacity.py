"""Probe capacity: what a probe costs with each prober, side by side in one run, against the
goals of the probe path (issue 9).

    python -m bench.probe_capacity [--targets 1000,10000] [--seconds 10] [--interval 1.0]
    python -m bench.probe_capacity --quick        # 1,000 targets only, 3 s each
    python -m bench.probe_capacity --loop asyncio # both probers on the standard loop

Two probers are measured: ``aiohttp`` (HttpProber, the aiohttp client) and ``fast``
(FastProber, an asyncio Protocol per target with httptools' parser). Both run on the same event
loop in the probing process: uvloop when it is installed (``--loop auto``), else asyncio.

For every size N, a health server in child processes listens on N loopback ports and answers
each GET with a small keep-alive JSON body. Then, for each prober, two measurements run, each in
a fresh process so that none sees another's memory or connections (three measurements):

- **throughput**: the prober probes all N targets round-robin with bounded concurrency for
  ``--seconds`` (after one pass that opens the keep-alive connections), checking the status and
  reading the JSON load fields under the body cap: probes per second and per CPU-second of the
  probing process.
- **steady state**: the real ProbeScheduler runs N servers every ``--interval`` for ``--seconds``
  after a warm-up of two intervals: the probing process's CPU as a share of one core, probes per
  second (all and OK), beats skipped by the scheduler, failed probes, how late probes start, and
  RSS growth per server (RSS before the prober and scheduler exist vs after the warm-up, / N).
- **traced memory**: the same scheduler under tracemalloc for two intervals: the Python memory
  the prober and the scheduler hold per server (connections, parser state, scheduler entries,
  the newest samples), without the allocator's slack that RSS also counts.

Lateness is a probe's start (when the prober is entered) minus the time its beat was due, which
the scheduler reports through its ``on_start`` hook; the first probe of each server counts too.

Sockets: each target needs a listening socket and an accepted connection in the server and a
connection in the prober. Both sides raise their soft RLIMIT_NOFILE to the hard limit; the
server is split over as many processes as the hard limit requires, and a size the prober cannot
hold is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import itertools
import math
import multiprocessing
import os
import platform
import resource
import socket
import sys
import time
import tracemalloc
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import aiohttp
import httptools
import psutil

from lbhealthd.model import Sample, ServerId
from lbhealthd.probes.aiohttp_prober import HttpProber
from lbhealthd.probes.http_prober import FastProber
from lbhealthd.probes.scheduler import DEFAULT_COALESCE, Prober, ProbeScheduler, Target

BODY = b'{"cpu":0.12,"inflight":3}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)
LOAD_FIELDS: Mapping[str, str] = {"cpu": "cpu", "inflight": "inflight"}
PROBE_TIMEOUT = 0.8  # the config's default probe timeout, for a 1 s interval
FDS_PER_PORT = 3  # a listening socket and up to two keep-alive connections (per_host=2)
FD_RESERVE = 200  # the interpreter, the event loop, pipes and libraries
PROBERS = ("aiohttp", "fast")

_SPAWN = multiprocessing.get_context("spawn")
_R = TypeVar("_R")


# --- the health server (child processes) -------------------------------------------------------


class _HealthProtocol(asyncio.Protocol):
    """Answers every complete request head on a connection with the same 200 JSON response."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._pending + data
        requests = buffer.count(b"\r\n\r\n")
        self._pending = buffer[buffer.rfind(b"\r\n\r\n") + 4 :] if requests else buffer
        if requests and self._transport is not None:
            self._transport.write(RESPONSE * requests)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def serve_health(count: int, lifetime: float, channel: Connection) -> None:
    """Child process: listen on ``count`` loopback ports, send them back, serve until
    ``lifetime`` seconds have passed or the parent closes its end of ``channel`` (or dies).
    A failure to listen is sent back as a string."""
    raise_nofile_limit()
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(count, lifetime, channel))


async def _serve(count: int, lifetime: float, channel: Connection) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
            servers.append(await loop.create_server(_HealthProtocol, sock=sock))
    except OSError as exc:
        channel.send(f"health server could not listen on port {len(servers) + 1}: {exc}")
        return
    channel.send([server.sockets[0].getsockname()[1] for server in servers])
    parent_gone = asyncio.Event()  # the pipe turns readable (EOF) when the parent closes it or dies
    loop.add_reader(channel.fileno(), parent_gone.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(parent_gone.wait(), lifetime)


@dataclass(frozen=True, slots=True)
class HealthServer:
    """Loopback ports answered by child processes, and how many processes serve them."""

    ports: tuple[int, ...]
    processes: int
    uvloop: bool


@contextlib.contextmanager
def health_server(count: int, lifetime: float, hard_limit: int) -> Iterator[HealthServer]:
    """Start enough child processes to serve ``count`` ports; stop them by PID on exit."""
    per_process = max(1, (hard_limit - FD_RESERVE) // FDS_PER_PORT)
    shares = [min(per_process, count - start) for start in range(0, count, per_process)]
    children: list[multiprocessing.process.BaseProcess] = []
    channels: list[Connection] = []
    try:
        for share in shares:
            ours, theirs = _SPAWN.Pipe()
            child = _SPAWN.Process(
                target=serve_health, args=(share, lifetime, theirs), name="health-server"
            )
            child.start()
            theirs.close()
            children.append(child)
            channels.append(ours)
        ports: list[int] = []
        for channel in channels:
            try:
                answer = channel.recv()
            except EOFError:
                raise RuntimeError("a health server process exited before listening") from None
            if isinstance(answer, str):
                raise RuntimeError(answer)
            ports.extend(answer)
        yield HealthServer(tuple(ports), len(children), _has_uvloop())
    finally:
        for channel in channels:
            channel.close()
        for process in children:
            process.terminate()
        for process in children:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def _has_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


# --- limits --------------------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def prober_fds_needed(targets: int, concurrency: int) -> int:
    """File descriptors the probing process may hold: a connection per target, one more for a
    target probed twice at once, and the reserve."""
    return targets + concurrency + FD_RESERVE


# --- the probing process: loop and prober ---------------------------------------------------------


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def _make_prober(kind: str) -> HttpProber | FastProber:
    return FastProber() if kind == "fast" else HttpProber()


# --- measurement A: throughput -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    probes: int
    failures: Mapping[str, int]  # outcome: count
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.probes / self.seconds

    @property
    def per_cpu_second(self) -> float:
        return self.probes / self.cpu_seconds if self.cpu_seconds > 0 else math.inf


def measure_throughput(
    kind: str, loop: str, ports: Sequence[int], seconds: float, concurrency: int
) -> Throughput:
    """Worker process: probe every port round-robin for ``seconds`` after a connecting pass."""
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(_throughput(kind, ports, seconds, concurrency))


async def _throughput(
    kind: str, ports: Sequence[int], seconds: float, concurrency: int
) -> Throughput:
    targets = [(_server_id(i), _url(port)) for i, port in enumerate(ports)]
    async with _make_prober(kind) as prober:
        await _drive(prober, targets, concurrency, limit=len(targets), until=math.inf)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        probes, failures = await _drive(
            prober, targets, concurrency, limit=None, until=wall_start + seconds
        )
        cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    return Throughput(probes, dict(failures), wall, cpu)


async def _drive(
    prober: Prober,
    targets: Sequence[tuple[ServerId, str]],
    concurrency: int,
    *,
    limit: int | None,
    until: float,
) -> tuple[int, Counter[str]]:
    """Probe ``targets`` round-robin from ``concurrency`` workers, ``limit`` probes in all or
    until the monotonic time ``until``; return the probes made and the failures by outcome."""
    counter = itertools.count() if limit is None else iter(range(limit))
    clock = time.monotonic
    probes = 0
    failures: Counter[str] = Counter()

    async def worker() -> None:
        nonlocal probes
        for n in counter:
            server, url = targets[n % len(targets)]
            sample = await prober.probe(server, url, PROBE_TIMEOUT, LOAD_FIELDS, clock)
            probes += 1
            if not sample.ok:
                failures[sample.outcome] += 1
            if clock() >= until:
                return

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(targets)))))
    return probes, failures


# --- measurement B: steady state -----------------------------------------------------------------


class _Starts:
    """The scheduler's start hook and a wrapping prober: when each probe was due, when the
    prober was entered, and how it ended."""

    def __init__(self, servers: Sequence[ServerId], prober: Prober) -> None:
        self._index = {server: i for i, server in enumerate(servers)}
        self._due = array("d", [math.nan]) * len(servers)
        self._prober = prober
        self.recording = False
        self.lateness = array("d")  # seconds
        self.probes = 0
        self.failures: Counter[str] = Counter()

    def __call__(self, server: ServerId, due: float, started: float) -> None:
        self._due[self._index[server]] = due

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,  # noqa: ASYNC109 - the prober's own signature
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample:
        if self.recording:
            self.lateness.append(now() - self._due[self._index[server]])
        sample = await self._prober.probe(server, url, timeout, load_fields, now)
        if self.recording:
            self.probes += 1
            if not sample.ok:
                self.failures[sample.outcome] += 1
        return sample


@dataclass(frozen=True, slots=True)
class Steady:
    probes: int
    failures: Mapping[str, int]  # outcome: count
    skipped: int
    seconds: float
    cpu_seconds: float
    lateness_ms: tuple[float, float]  # p50, p99
    rss_growth: int  # bytes, from before the prober and scheduler to after the warm-up

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds

    @property
    def per_second(self) -> float:
        return self.probes / self.seconds

    @property
    def ok_per_second(self) -> float:
        return (self.probes - sum(self.failures.values())) / self.seconds


def measure_steady(
    kind: str,
    loop: str,
    ports: Sequence[int],
    seconds: float,
    interval: float,
    coalesce: float,
) -> Steady:
    """Worker process: run the scheduler over every port for ``seconds`` after a warm-up."""
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(_steady(kind, ports, seconds, interval, coalesce))


async def _steady(
    kind: str, ports: Sequence[int], seconds: float, interval: float, coalesce: float
) -> Steady:
    servers = [_server_id(i) for i in range(len(ports))]
    timeout = min(PROBE_TIMEOUT, 0.8 * interval)
    targets = {
        server: Target(_url(port), interval, timeout, LOAD_FIELDS)
        for server, port in zip(servers, ports, strict=True)
    }
    process = psutil.Process()
    rss_before = process.memory_info().rss
    async with _make_prober(kind) as prober:
        starts = _Starts(servers, prober)
        scheduler = ProbeScheduler(starts, time.monotonic, coalesce=coalesce, on_start=starts)
        try:
            scheduler.sync(targets)
            await asyncio.sleep(2 * interval)
            rss_growth = process.memory_info().rss - rss_before
            skipped_before = scheduler.skipped
            starts.recording = True
            cpu_start, wall_start = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            starts.recording = False
            cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
            skipped = scheduler.skipped - skipped_before
        finally:
            await scheduler.close()
    lateness = sorted(starts.lateness)
    return Steady(
        probes=starts.probes,
        failures=dict(starts.failures),
        skipped=skipped,
        seconds=wall,
        cpu_seconds=cpu,
        lateness_ms=(_percentile(lateness, 0.50) * 1e3, _percentile(lateness, 0.99) * 1e3),
        rss_growth=rss_growth,
    )


# --- measurement C: memory the daemon holds per server ---------------------------------------


def measure_traced(kind: str, loop: str, ports: Sequence[int], interval: float) -> float:
    """Worker process: bytes of Python memory held per server by the prober and the scheduler
    after two intervals (tracemalloc; a process of its own, since tracing slows the loop)."""
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(_traced(kind, ports, interval))


async def _traced(kind: str, ports: Sequence[int], interval: float) -> float:
    servers = [_server_id(i) for i in range(len(ports))]
    timeout = min(PROBE_TIMEOUT, 0.8 * interval)
    targets = {
        server: Target(_url(port), interval, timeout, LOAD_FIELDS)
        for server, port in zip(servers, ports, strict=True)
    }
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with _make_prober(kind) as prober:
            scheduler = ProbeScheduler(prober, time.monotonic)
            try:
                scheduler.sync(targets)
                await asyncio.sleep(2 * interval)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                await scheduler.close()
    finally:
        tracemalloc.stop()
    return held / len(ports)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# --- running and reporting -----------------------------------------------------------------------


def _server_id(i: int) -> ServerId:
    return ServerId("bench", f"s{i}")


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"


def _in_fresh_process(function: Callable[..., _R], *args: Any) -> _R:
    with ProcessPoolExecutor(max_workers=1, mp_context=_SPAWN) as pool:
        return pool.submit(function, *args).result()


@dataclass(frozen=True, slots=True)
class Row:
    targets: int
    prober: str
    throughput: Throughput | None = None
    steady: Steady | None = None
    server_processes: int = 0
    skipped: str = ""
    interval: float = 1.0
    traced: float = math.nan  # bytes per server, measurement C


def run_size(
    targets: int,
    seconds: float,
    interval: float,
    concurrency: int,
    hard_limit: int,
    loop: str,
    coalesce: float,
    probers: Sequence[str] = PROBERS,
) -> list[Row]:
    needed = prober_fds_needed(targets, concurrency)
    if needed > hard_limit:
        why = f"needs about {needed} open files, hard RLIMIT_NOFILE is {hard_limit}"
        return [Row(targets, kind, skipped=why) for kind in probers]
    lifetime = len(probers) * (2 * seconds + 3 * interval + 60) + targets / 50
    rows = []
    with health_server(targets, lifetime, hard_limit) as server:
        for kind in probers:
            _say(f"{targets} targets, {kind}: throughput ...")
            throughput = _in_fresh_process(
                measure_throughput, kind, loop, server.ports, seconds, concurrency
            )
            _say(f"{targets} targets, {kind}: steady state at {interval:g} s ...")
            steady = _in_fresh_process(
                measure_steady, kind, loop, server.ports, seconds, interval, coalesce
            )
            _say(f"{targets} targets, {kind}: memory held (tracemalloc) ...")
            traced = _in_fresh_process(measure_traced, kind, loop, server.ports, interval)
            rows.append(
                Row(targets, kind, throughput, steady, server.processes, "", interval, traced)
            )
    return rows


def machine(server_uvloop: bool, probing_loop: str = "asyncio") -> list[str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    memory = psutil.virtual_memory().total / 2**30
    loops = f"probing loop: {probing_loop}"
    if probing_loop == "uvloop" or server_uvloop:
        loops += f", uvloop {importlib.metadata.version('uvloop')}"
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"CPU: {model}, {os.cpu_count()} cores, {memory:.0f} GiB",
        f"OS: {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__},"
        f" httptools {httptools.__version__}, {loops},"
        f" health server loop: {'uvloop' if server_uvloop else 'asyncio'}",
        f"RLIMIT_NOFILE: soft {soft}, hard {hard}",
    ]


def table(rows: Sequence[Row], interval: float) -> list[str]:
    lines = [
        "| targets | prober | probes/s | probes per CPU-s | steady CPU % of a core"
        f" | steady probes/s, all (ok) of {_fmt(1 / interval)}×N | beats skipped"
        " | start lateness p50 / p99 ms | failures (A / B) | RSS per server KB"
        " | traced per server KB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b = row.throughput, row.steady
        if a is None or b is None:
            lines.append(f"| {row.targets:,} | {row.prober} | skipped: {row.skipped} ||||||||||")
            continue
        lines.append(
            f"| {row.targets:,} | {row.prober} | {a.per_second:,.0f} | {a.per_cpu_second:,.0f}"
            f" | {b.cpu_percent:.1f} | {b.per_second:,.0f} ({b.ok_per_second:,.0f})"
            f" | {b.skipped:,} | {b.lateness_ms[0]:.2f} / {b.lateness_ms[1]:.2f}"
            f" | {sum(a.failures.values())} / {sum(b.failures.values())}"
            f" | {b.rss_growth / row.targets / 1024:.2f} | {row.traced / 1024:.2f} |"
        )
    return lines


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    size: int
    value: Callable[[Row], float]
    unit: str
    limit: float
    higher_is_better: bool


GOALS = (
    Goal(
        "probes per CPU-second, 1,000 keep-alive targets",
        1000,
        lambda row: row.throughput.per_cpu_second if row.throughput else math.nan,
        "",
        30_000,
        True,
    ),
    Goal(
        "CPU % of one core, 1,000 servers × interval",
        1000,
        lambda row: row.steady.cpu_percent if row.steady else math.nan,
        " %",
        10.0,
        False,
    ),
    Goal(
        "p99 start lateness, 1,000 servers × interval",
        1000,
        lambda row: row.steady.lateness_ms[1] if row.steady else math.nan,
        " ms",
        2.0,
        False,
    ),
    Goal(
        "RSS per server (prober + scheduler), 1,000 servers",
        1000,
        lambda row: row.steady.rss_growth / row.targets / 1024 if row.steady else math.nan,
        " KB",
        2.0,
        False,
    ),
    Goal(
        "RSS per server (prober + scheduler), 10,000 servers",
        10000,
        lambda row: row.steady.rss_growth / row.targets / 1024 if row.steady else math.nan,
        " KB",
        2.0,
        False,
    ),
    Goal(
        "Python memory held per server (tracemalloc), 10,000 servers",
        10000,
        lambda row: row.traced / 1024,
        " KB",
        2.0,
        False,
    ),
    Goal(
        "OK probes of the nominal rate, 10,000 servers × interval",
        10000,
        lambda row: (
            100.0 * row.steady.ok_per_second * row.interval / row.targets
            if row.steady
            else math.nan
        ),
        " %",
        95.0,
        True,
    ),
)


def goals_table(rows: Sequence[Row]) -> list[str]:
    """Each goal's figure for both probers, their ratio (fast ÷ aiohttp) and the verdict."""
    by = {(row.targets, row.prober): row for row in rows if row.steady is not None}
    lines = [
        "| goal | aiohttp | fast | fast ÷ aiohttp | target | fast prober |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for goal in GOALS:
        old, new = by.get((goal.size, "aiohttp")), by.get((goal.size, "fast"))
        if old is None or new is None:
            continue
        a, b = goal.value(old), goal.value(new)
        ratio = b / a if a else math.inf
        sign = "≥" if goal.higher_is_better else "≤"
        met = b >= goal.limit if goal.higher_is_better else b <= goal.limit
        if met:
            verdict = "met"
        elif goal.higher_is_better:
            verdict = f"missed: {goal.limit / b:.2f}× short" if b > 0 else "missed"
        else:
            verdict = f"missed: {b / goal.limit:.2f}× over"
        lines.append(
            f"| {goal.name} | {_num(a)}{goal.unit} | {_num(b)}{goal.unit} | {ratio:.2f}"
            f" | {sign} {_num(goal.limit)}{goal.unit} | {verdict} |"
        )
    return lines


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def notes(rows: Sequence[Row], seconds: float, interval: float) -> list[str]:
    lines = []
    for row in rows:
        a, b = row.throughput, row.steady
        if a is None or b is None:
            continue
        who = f"{row.targets:,} targets, {row.prober}"
        for name, failures in (("throughput", a.failures), ("steady state", b.failures)):
            if failures:
                kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(failures.items()))
                lines.append(f"- {who}, {name}: failed probes: {kinds}.")
        nominal = row.targets / interval
        if b.per_second < 0.95 * nominal:
            lines.append(
                f"- {who}: {b.per_second / nominal:.0%} of the nominal {nominal:,.0f} probes/s"
                f" were made; the scheduler skipped {b.skipped:,} beats."
            )
        if b.seconds > 1.2 * seconds:
            lines.append(
                f"- {who}: the {seconds:g} s steady window took {b.seconds:.1f} s:"
                " the event loop woke its sleep that late."
            )
    processes = {row.targets: row.server_processes for row in rows if row.server_processes > 1}
    for size, count in processes.items():
        lines.append(
            f"- {size:,} targets: the health server ran in {count} processes"
            " (hard RLIMIT_NOFILE), sharing the cores with the prober."
        )
    return lines


def _fmt(value: float) -> str:
    return f"{value:g}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("every size must be at least 1")
    return sizes


def _probers(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(names) - set(PROBERS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(PROBERS)}: {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_capacity", description=__doc__)
    parser.add_argument("--targets", type=_sizes, help="sizes to measure (1000,10000)")
    parser.add_argument("--seconds", type=float, help="length of each measurement (10)")
    parser.add_argument("--interval", type=float, default=1.0, help="probe interval (1.0)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="probes in flight for throughput (100)"
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the probing processes' event loop (auto: uvloop if installed)",
    )
    parser.add_argument(
        "--coalesce",
        type=float,
        default=DEFAULT_COALESCE,
        help=f"the scheduler's coalescing window in seconds ({DEFAULT_COALESCE:g})",
    )
    parser.add_argument(
        "--probers",
        type=_probers,
        default=PROBERS,
        help="probers to measure, comma-separated (aiohttp,fast)",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 targets only, 3 s each")
    args = parser.parse_args(argv)
    sizes: list[int] = args.targets or ([1000] if args.quick else [1000, 10000])
    seconds: float = args.seconds or (3.0 if args.quick else 10.0)
    loop: str = args.loop
    if loop == "auto":
        loop = "uvloop" if _has_uvloop() else "asyncio"
    elif loop == "uvloop" and not _has_uvloop():
        parser.error("uvloop is not installed (pip install uvloop)")
    hard_limit = raise_nofile_limit()
    rows: list[Row] = []
    for size in sizes:
        size_rows = run_size(
            size,
            seconds,
            args.interval,
            args.concurrency,
            hard_limit,
            loop,
            args.coalesce,
            args.probers,
        )
        for row in size_rows[:1]:
            if row.skipped:
                _say(f"{size} targets skipped: {row.skipped}")
        rows.extend(size_rows)
    print("\n".join(machine(_has_uvloop(), loop)))
    print(
        f"each measurement {seconds:g} s; interval {args.interval:g} s;"
        f" throughput concurrency {args.concurrency}; scheduler coalescing {args.coalesce:g} s"
    )
    print()
    print("\n".join(goals_table(rows)))
    print()
    print("\n".join(table(rows, args.interval)))
    extra = notes(rows, seconds, args.interval)
    if extra:
        print()
        print("\n".join(extra))


if __name__ == "__main__":
    main()
