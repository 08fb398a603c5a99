"""Probe capacity: how many HTTP health probes one core sustains, and what a steady schedule costs.

    python -m bench.probe_capacity [--targets 100,1000,10000] [--seconds 10] [--interval 1.0]
    python -m bench.probe_capacity --quick        # 100 and 1,000 targets, 3 s each

For every size N, a health server in child processes listens on N loopback ports and answers
each GET with a small keep-alive JSON body. Two measurements then run, each in a fresh process so
that neither sees the other's memory or connections:

- **throughput**: the real HttpProber probes all N targets round-robin with bounded concurrency
  for ``--seconds`` (after one pass that opens the keep-alive connections): probes per second and
  probes per CPU-second of the probing process.
- **steady state**: the real ProbeScheduler with the real HttpProber runs N servers every
  ``--interval`` for ``--seconds`` after a warm-up of one interval: the probing process's CPU as a
  share of one core, probes per second achieved, how late probes start, failed probes, and RSS
  growth per server (RSS before the scheduler exists vs after the warm-up, divided by N).

Lateness is a probe's start minus the time it was due. The scheduler does not expose when a probe
is due, so it is rebuilt from the scheduler's own rule: the first probe is due when it starts;
each next one at the previous due time plus the interval plus the jitter the scheduler drew (read
from the ``rng`` it is given), and never before the previous probe ended. A start found earlier
than its due time means the rule no longer matches the scheduler; the run says so.

Sockets: each target needs a listening socket and an accepted connection in the server and a
connection in the prober. Both sides raise their soft RLIMIT_NOFILE to the hard limit; the
server is split over as many processes as the hard limit requires, and a size the prober cannot
hold is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import platform
import random
import resource
import socket
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import aiohttp
import psutil

from lbhealthd.model import Sample, ServerId
from lbhealthd.probes.http import HttpProber
from lbhealthd.probes.scheduler import ProbeScheduler, Target

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
EARLY_TOLERANCE = 0.001  # seconds; an earlier start means the due-time rule is out of date

_SPAWN = multiprocessing.get_context("spawn")
_R = TypeVar("_R")


# --- the health server (child processes) -------------------------------------------------------


class _HealthProtocol(asyncio.Protocol):
    """Answers every complete request head on a connection with the same 200 JSON response."""

    def __init__(self) -> None:
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


def measure_throughput(ports: Sequence[int], seconds: float, concurrency: int) -> Throughput:
    """Worker process: probe every port round-robin for ``seconds`` after a connecting pass."""
    raise_nofile_limit()
    return asyncio.run(_throughput(ports, seconds, concurrency))


async def _throughput(ports: Sequence[int], seconds: float, concurrency: int) -> Throughput:
    targets = [(_server_id(i), _url(port)) for i, port in enumerate(ports)]
    async with HttpProber() as prober:
        await _drive(prober, targets, concurrency, limit=len(targets), until=math.inf)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        probes, failures = await _drive(
            prober, targets, concurrency, limit=None, until=wall_start + seconds
        )
        cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    return Throughput(probes, dict(failures), wall, cpu)


async def _drive(
    prober: HttpProber,
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


class _DueTimes:
    """Rebuilds when each server's probe was due and records how late it started."""

    def __init__(self, servers: Sequence[ServerId], interval: float) -> None:
        self._index = {server: i for i, server in enumerate(servers)}
        self._interval = interval
        self._due = array("d", [math.nan]) * len(servers)
        self._ended = array("d", [0.0]) * len(servers)
        self._just_ended = -1  # a server whose loop draws its jitter next
        self.recording = False
        self.lateness = array("d")  # seconds
        self.probes = 0
        self.failures: Counter[str] = Counter()
        self.overruns = 0  # probes due when the previous one ended: the cadence slipped

    def started(self, server: ServerId, at: float) -> None:
        i = self._index[server]
        due = self._due[i]
        if math.isnan(due):
            self._due[i] = at
        elif self.recording:
            self.lateness.append(at - due)

    def ended(self, server: ServerId, at: float, sample: Sample) -> None:
        i = self._index[server]
        self._ended[i] = at
        self._just_ended = i
        if self.recording:
            self.probes += 1
            if not sample.ok:
                self.failures[sample.outcome] += 1

    def jitter(self, value: float) -> None:
        """The scheduler drew ``value``: a phase for a new loop, or the jitter of the next probe
        of the server whose probe just ended (drawn before its loop yields again)."""
        i, self._just_ended = self._just_ended, -1
        if i < 0:
            return
        due = self._due[i] + self._interval + value
        if due < self._ended[i]:
            due = self._ended[i]
            self.overruns += self.recording
        self._due[i] = due


class _ObservedRandom(random.Random):
    """The scheduler's jitter source, telling ``_DueTimes`` every value it draws."""

    def __init__(self, due: _DueTimes) -> None:
        super().__init__()
        self._due_times = due

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self._due_times.jitter(value)
        return value


class _TimedProber(HttpProber):
    """The real prober, telling ``_DueTimes`` when each probe starts and ends."""

    def __init__(self, due: _DueTimes) -> None:
        super().__init__()
        self._due_times = due

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,  # noqa: ASYNC109 - the prober's own signature
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample:
        self._due_times.started(server, now())
        sample = await super().probe(server, url, timeout, load_fields, now)
        self._due_times.ended(server, now(), sample)
        return sample


@dataclass(frozen=True, slots=True)
class Steady:
    probes: int
    failures: Mapping[str, int]  # outcome: count
    seconds: float
    cpu_seconds: float
    lateness_ms: tuple[float, float]  # p50, p99
    overruns: int
    early: int  # starts before their rebuilt due time
    rss_growth: int  # bytes, from before the scheduler to after the warm-up

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds

    @property
    def per_second(self) -> float:
        return self.probes / self.seconds

    @property
    def ok_per_second(self) -> float:
        return (self.probes - sum(self.failures.values())) / self.seconds


def measure_steady(ports: Sequence[int], seconds: float, interval: float) -> Steady:
    """Worker process: run the scheduler over every port for ``seconds`` after a warm-up."""
    raise_nofile_limit()
    return asyncio.run(_steady(ports, seconds, interval))


async def _steady(ports: Sequence[int], seconds: float, interval: float) -> Steady:
    servers = [_server_id(i) for i in range(len(ports))]
    timeout = min(PROBE_TIMEOUT, 0.8 * interval)
    targets = {
        server: Target(_url(port), interval, timeout, LOAD_FIELDS)
        for server, port in zip(servers, ports, strict=True)
    }
    due = _DueTimes(servers, interval)
    process = psutil.Process()
    async with _TimedProber(due) as prober:
        rss_before = process.memory_info().rss
        scheduler = ProbeScheduler(prober, time.monotonic, rng=_ObservedRandom(due))
        try:
            scheduler.sync(targets)
            await asyncio.sleep(interval)
            rss_growth = process.memory_info().rss - rss_before
            due.recording = True
            cpu_start, wall_start = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            due.recording = False
            cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
        finally:
            await scheduler.close()
    lateness = sorted(due.lateness)
    return Steady(
        probes=due.probes,
        failures=dict(due.failures),
        seconds=wall,
        cpu_seconds=cpu,
        lateness_ms=(_percentile(lateness, 0.50) * 1e3, _percentile(lateness, 0.99) * 1e3),
        overruns=due.overruns,
        early=sum(1 for late in lateness if late < -EARLY_TOLERANCE),
        rss_growth=rss_growth,
    )


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
    throughput: Throughput | None = None
    steady: Steady | None = None
    server_processes: int = 0
    skipped: str = ""


def run_size(
    targets: int, seconds: float, interval: float, concurrency: int, hard_limit: int
) -> Row:
    needed = prober_fds_needed(targets, concurrency)
    if needed > hard_limit:
        return Row(
            targets,
            skipped=f"needs about {needed} open files, hard RLIMIT_NOFILE is {hard_limit}",
        )
    lifetime = 2 * seconds + interval + 60 + targets / 100
    with health_server(targets, lifetime, hard_limit) as server:
        _say(f"{targets} targets: {server.processes} health-server process(es); throughput ...")
        throughput = _in_fresh_process(measure_throughput, server.ports, seconds, concurrency)
        _say(f"{targets} targets: steady state at {interval:g} s ...")
        steady = _in_fresh_process(measure_steady, server.ports, seconds, interval)
    return Row(targets, throughput, steady, server.processes)


def machine(server_uvloop: bool) -> list[str]:
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
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"CPU: {model}, {os.cpu_count()} cores, {memory:.0f} GiB",
        f"OS: {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__},"
        f" probing loop: asyncio, health server loop: {'uvloop' if server_uvloop else 'asyncio'}",
        f"RLIMIT_NOFILE: soft {soft}, hard {hard}",
    ]


def table(rows: Sequence[Row], interval: float) -> list[str]:
    lines = [
        "| targets | probes/s | probes per CPU-s | steady CPU % of a core"
        f" | steady probes/s, all (ok) of {_fmt(1 / interval)}×N | start lateness p50 / p99 ms"
        " | failures (A / B) | RSS per server KB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b = row.throughput, row.steady
        if a is None or b is None:
            lines.append(f"| {row.targets:,} | skipped: {row.skipped} | | | | | | |")
            continue
        lines.append(
            f"| {row.targets:,} | {a.per_second:,.0f} | {a.per_cpu_second:,.0f}"
            f" | {b.cpu_percent:.1f} | {b.per_second:,.0f} ({b.ok_per_second:,.0f})"
            f" | {b.lateness_ms[0]:.2f} / {b.lateness_ms[1]:.2f}"
            f" | {sum(a.failures.values())} / {sum(b.failures.values())}"
            f" | {b.rss_growth / row.targets / 1024:.2f} |"
        )
    return lines


def notes(rows: Sequence[Row], seconds: float, interval: float) -> list[str]:
    lines = []
    for row in rows:
        a, b = row.throughput, row.steady
        if a is None or b is None:
            continue
        for name, failures in (("throughput", a.failures), ("steady state", b.failures)):
            if failures:
                kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(failures.items()))
                lines.append(f"- {row.targets:,} targets, {name}: failed probes: {kinds}.")
        nominal = row.targets / interval
        if b.per_second < 0.95 * nominal:
            lines.append(
                f"- {row.targets:,} targets: the scheduler kept up with only"
                f" {b.per_second / nominal:.0%} of the nominal {nominal:,.0f} probes/s"
                f" ({b.overruns:,} probes fell due only when the previous one ended)."
            )
        if b.seconds > 1.2 * seconds:
            lines.append(
                f"- {row.targets:,} targets: the {seconds:g} s steady window took"
                f" {b.seconds:.1f} s: the event loop woke its sleep that late."
            )
        if b.early:
            lines.append(
                f"- {row.targets:,} targets: {b.early} starts came before their rebuilt due time:"
                " the due-time rule no longer matches the scheduler; lateness is unreliable."
            )
        if row.server_processes > 1:
            lines.append(
                f"- {row.targets:,} targets: the health server ran in {row.server_processes}"
                " processes (hard RLIMIT_NOFILE), sharing the cores with the prober."
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_capacity", description=__doc__)
    parser.add_argument("--targets", type=_sizes, help="sizes to measure (100,1000,10000)")
    parser.add_argument("--seconds", type=float, help="length of each measurement (10)")
    parser.add_argument("--interval", type=float, default=1.0, help="probe interval (1.0)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="probes in flight for throughput (100)"
    )
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 targets, 3 s each")
    args = parser.parse_args(argv)
    sizes: list[int] = args.targets or ([100, 1000] if args.quick else [100, 1000, 10000])
    seconds: float = args.seconds or (3.0 if args.quick else 10.0)
    hard_limit = raise_nofile_limit()
    rows = []
    for size in sizes:
        row = run_size(size, seconds, args.interval, args.concurrency, hard_limit)
        if row.skipped:
            _say(f"{size} targets skipped: {row.skipped}")
        rows.append(row)
    print("\n".join(machine(_has_uvloop())))
    print(
        f"each measurement {seconds:g} s; interval {args.interval:g} s;"
        f" throughput concurrency {args.concurrency}"
    )
    print()
    print("\n".join(table(rows, args.interval)))
    extra = notes(rows, seconds, args.interval)
    if extra:
        print()
        print("\n".join(extra))


if __name__ == "__main__":
    main()
