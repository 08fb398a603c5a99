"""The decision engine at 10,000 servers and HAProxy's runtime API per command.

    python -m bench.engine_and_api [--servers 10000] [--rounds 30] [--commands 2000]
                                   [--round-changes 400]

Prints, each beside its goal:
- decide() per round for N servers with two load signals each, every server with a new
  sample every round (min, median, p90, max, and the share of that time the garbage collector
  took); the engine's memory per server (tracemalloc of its state);
- ``set server ... weight`` against a real HAProxy on loopback: one connection per command
  (the driver's way before it kept a prompt-mode connection; made here by hand), then the
  driver one command at a time, then the driver with every command in flight at once;
- one daemon round that takes ``--round-changes`` servers out at once (operators' drain
  overrides in a pool of 2.5 times as many): its time, per change, the connections it opened
  and the state_dir writes it made.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import structlog
import yaml

from lbhealthd.config import parse_config
from lbhealthd.daemon.loop import Daemon
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.engine import EngineState, Observation, PoolSettings, Settings, decide
from lbhealthd.engine.settings import Marks
from lbhealthd.model import AdminState, Override, OverrideKind, ProbeOutcome, Sample, ServerId
from lbhealthd.store import Store

DECIDE_GOAL_MS = 20.0
COMMAND_GOAL_US = 50.0


def verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else f"missed: {value / goal:.2f}x the goal"


def engine(servers: int, rounds: int) -> None:
    pool = PoolSettings(name="api", marks={"latency_ms": Marks(500, 200), "cpu": Marks(0.9, 0.6)})
    settings = Settings({"api": pool})
    ids = [ServerId("api", f"s{i}") for i in range(servers)]
    rng = random.Random(1)
    gc_time = 0.0
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_time, gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        else:
            gc_time += time.perf_counter() - gc_started

    state = EngineState()
    times = []
    gc_times = []
    obs: dict[ServerId, Observation] = {}
    gc.callbacks.append(on_gc)
    try:
        for r in range(rounds + 2):
            now = 1000.0 + r
            obs = {
                sid: Observation(
                    Sample(
                        sid,
                        now,
                        ProbeOutcome.OK,
                        {"latency_ms": rng.uniform(10, 300), "cpu": rng.uniform(0, 0.95)},
                    )
                )
                for sid in ids
            }
            gc_time = 0.0
            started = time.perf_counter()
            state, _ = decide(state, obs, {}, settings, now)
            if r >= 2:  # the first two rounds create every state
                times.append((time.perf_counter() - started) * 1000)
                gc_times.append(gc_time * 1000)
    finally:
        gc.callbacks.remove(on_gc)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept, _ = decide(EngineState(), obs, {}, settings, now + 1)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    median = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1]
    print(
        f"decide() for {servers:,} servers, {len(times)} rounds: min {min(times):.1f} ms, "
        f"median {median:.1f} ms, p90 {p90:.1f} ms, max {max(times):.1f} ms "
        f"(goal <= {DECIDE_GOAL_MS:g} ms: median {verdict(median, DECIDE_GOAL_MS)}; "
        f"min {verdict(min(times), DECIDE_GOAL_MS)})"
    )
    print(
        f"  of which the garbage collector: median {statistics.median(gc_times):.1f} ms, "
        f"max {max(gc_times):.1f} ms"
    )
    print(
        f"engine state and decision: {grown / servers:.0f} bytes per server "
        f"({len(kept.servers):,} servers)"
    )


async def one_shot(path: str, line: bytes) -> bytes:
    """One command on its own connection, read to EOF (the driver's former way)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(line)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def runtime_api(commands: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        servers = [ServerSpec(f"s{i}", "127.0.0.1", 20000 + i, 100) for i in range(50)]
        proc = HAProxyProcess(tmp, {"api": servers})
        await proc.start()
        try:
            sids = [ServerId("api", s.name) for s in servers]
            started = time.perf_counter()
            for i in range(commands):
                line = f"set server api/s{i % 50} weight {50 + i % 50}\n".encode()
                assert (await one_shot(str(proc.socket_path), line)).strip() == b""
            shot = (time.perf_counter() - started) / commands * 1e6

            driver = HAProxyDriver([proc.socket], timeout=5.0)
            try:
                started = time.perf_counter()
                for i in range(commands):
                    await driver.set_weight(sids[i % len(sids)], 50 + i % 50)
                seq = (time.perf_counter() - started) / commands * 1e6
                opened = driver.connections
                started = time.perf_counter()
                await asyncio.gather(
                    *(driver.set_weight(sids[i % len(sids)], 100) for i in range(commands))
                )
                par = (time.perf_counter() - started) / commands * 1e6
                burst_connections = driver.connections - opened
            finally:
                await driver.close()
        finally:
            await proc.stop()
    print(f"runtime API, {commands:,} x 'set server ... weight' (goal <= {COMMAND_GOAL_US:g} us):")
    print(f"  one connection per command (before):     {shot:7.1f} us each")
    print(
        f"  driver, one command at a time:            {seq:7.1f} us each ({opened} connection(s))"
    )
    print(
        f"  driver, all {commands:,} in flight at once:    {par:7.1f} us each amortised "
        f"({burst_connections} new connections): {verdict(par, COMMAND_GOAL_US)}"
    )


async def daemon_round(changes: int) -> None:
    size = int(changes * 2.5)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        servers = [ServerSpec(f"s{i}", "127.0.0.1", 1024 + i, 100) for i in range(size)]
        proc = HAProxyProcess(work / "haproxy", {"api": servers})
        await proc.start()
        try:
            state = work / "state"
            store = Store.open(state)
            wall = time.time()
            for i in range(changes):
                sid = ServerId("api", f"s{i}")
                store.put_override(Override(sid, OverrideKind.DRAIN, "bench", "bench", wall))
            doc = {
                "daemon": {
                    "state_dir": str(state),
                    "control_socket": str(work / "control.sock"),
                    "http": f"127.0.0.1:{free_port()}",
                    "log_format": "json",
                },
                "load_balancer": {"type": "haproxy", "haproxy": {"sockets": [proc.socket]}},
                # probes far apart: the round's own work is what is measured, not the probing
                # of servers that are not there
                "pools": [{"name": "api", "blind_threshold": "100%", "probe": {"interval": "60s"}}],
            }
            daemon = Daemon(parse_config(yaml.safe_dump(doc), "bench"))
            driver = daemon.driver
            assert isinstance(driver, HAProxyDriver)
            try:
                started = time.perf_counter()
                await daemon.reconciler.tick()
                took = time.perf_counter() - started
                writes = daemon.reconciler.journal.writes
                connections = driver.connections
            finally:
                await daemon.close()
            view = HAProxyDriver([proc.socket])
            try:
                members = (await view.snapshot("api")).members
            finally:
                await view.close()
            drained = sum(1 for m in members if m.admin is AdminState.DRAIN)
        finally:
            await proc.stop()
    print(
        f"one daemon round taking {changes:,} of {size:,} servers out: {took * 1000:.0f} ms "
        f"({took / changes * 1e6:.0f} us per change, reads of the LB, the decision and the "
        f"action log included), {connections} connection(s) to HAProxy, {writes} state_dir "
        f"writes; {drained:,} servers in DRAIN after it"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_and_api", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--commands", type=int, default=2_000)
    parser.add_argument("--round-changes", type=int, default=400)
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines here
    engine(args.servers, args.rounds)
    if find_haproxy() is None:
        print("runtime API: haproxy not installed, skipped")
        return 0
    asyncio.run(runtime_api(args.commands))
    asyncio.run(daemon_round(args.round_changes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
