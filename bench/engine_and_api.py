"""The decision engine at 10,000 servers and HAProxy's runtime API per command.

    python -m bench.engine_and_api [--servers 10000] [--rounds 20] [--commands 2000]

Prints: decide() time per round (median, max) for N servers with two load signals each; the
engine's memory per server (tracemalloc of its state); and the time per `set server ... weight`
command through the HAProxy driver against a real HAProxy on loopback (one connection per
command, the driver's way), sequential and with 2 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Sequence

from lbhealthd.drivers.haproxy import HAProxyDriver
from lbhealthd.engine import EngineState, Observation, PoolSettings, Settings, decide
from lbhealthd.engine.settings import Marks
from lbhealthd.haproxy_proc import HAProxyProcess, ServerSpec, find_haproxy
from lbhealthd.model import ProbeOutcome, Sample, ServerId


def engine(servers: int, rounds: int) -> None:
    pool = PoolSettings(name="api", marks={"latency_ms": Marks(500, 200), "cpu": Marks(0.9, 0.6)})
    settings = Settings({"api": pool})
    ids = [ServerId("api", f"s{i}") for i in range(servers)]
    rng = random.Random(1)
    state = EngineState()
    times = []
    for r in range(rounds):
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
        started = time.perf_counter()
        state, _ = decide(state, obs, {}, settings, now)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept, _ = decide(EngineState(), obs, {}, settings, now + 1)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(
        f"decide() for {servers:,} servers: median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {rounds} rounds (goal <= 20 ms)"
    )
    print(
        f"engine state and decision: {grown / servers:.0f} bytes per server "
        f"({len(kept.servers):,} servers)"
    )


async def runtime_api(commands: int) -> None:
    if find_haproxy() is None:
        print("runtime API: haproxy not installed, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        servers = [ServerSpec(f"s{i}", "127.0.0.1", 20000 + i, 100) for i in range(50)]
        proc = HAProxyProcess(tmp, {"api": servers})
        await proc.start()
        try:
            driver = HAProxyDriver([proc.socket], timeout=2.0)
            sids = [ServerId("api", s.name) for s in servers]
            started = time.perf_counter()
            for i in range(commands):
                await driver.set_weight(sids[i % len(sids)], 50 + i % 50)
            seq = (time.perf_counter() - started) / commands
            started = time.perf_counter()
            await asyncio.gather(
                *(driver.set_weight(sids[i % len(sids)], 100) for i in range(commands))
            )
            par = (time.perf_counter() - started) / commands
            print(
                f"runtime API, one connection per command: {seq * 1e6:.0f} us sequential, "
                f"{par * 1e6:.0f} us amortised with 2 in flight (goal <= 50 us)"
            )
        finally:
            await proc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_and_api", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--commands", type=int, default=2_000)
    args = parser.parse_args(argv)
    engine(args.servers, args.rounds)
    asyncio.run(runtime_api(args.commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
