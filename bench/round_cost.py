"""Round cost: the daemon's CPU per round beyond probing, for a large pool where little changes.

    python -m bench.round_cost [--servers 10000] [--rounds 30] [--new 0.0,0.2] [--profile]
                               [--stats-interval 0]

A real HAProxy runs one backend of ``--servers`` servers (no checks, no traffic); the daemon's
real reconciler reads it through the real driver every round, decides, converges and publishes
its report, and the metrics are updated from that report, as ``lbhealthd run`` does. Probing is
left out on purpose: a stand-in scheduler hands the reconciler samples, a share of which
(``--new``) is new each round (at 10,000 servers probed every 5 s with 1 s rounds, a fifth of
the servers have a new sample each round). Nothing is overloaded, so no round changes the LB.

Reported per share of new samples: the CPU time (user + system of this process) of a round,
and of its parts: ``tick`` (read, decide, converge, report) and the metrics update; then the
time of ``decide()`` alone inside those rounds. ``--profile`` prints the functions that took the
most time over all rounds of the last share. The rounds run back to back; the counters (``show
stat``) are read every round by default (``--stats-interval 0``, the worst case), or at most
every ``--stats-interval`` seconds as ``load_balancer.haproxy.stats_interval`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import structlog
import yaml

from bench.probe_capacity import machine
from lbhealthd import engine
from lbhealthd.config import Config, parse_config
from lbhealthd.daemon import reconciler as reconciler_module
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.daemon.reconciler import Reconciler
from lbhealthd.drivers import STATE_BLOB, make_driver
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.model import ProbeOutcome, Sample, ServerId
from lbhealthd.store import Store

POOL = "api"


class StandInProbes:
    """The scheduler's surface; ``advance`` gives a share of the servers a new sample."""

    def __init__(self) -> None:
        self.targets: dict[ServerId, object] = {}
        self.samples: dict[ServerId, Sample] = {}
        self._next = 0

    def sync(self, targets: Mapping[ServerId, object]) -> None:
        self.targets = dict(targets)

    def latest(self, sid: ServerId) -> Sample | None:
        return self.samples.get(sid)

    def advance(self, share: float, at: float) -> None:
        ids = sorted(self.targets)
        if not self.samples:
            share = 1.0
        count = round(share * len(ids))
        for _ in range(count):
            sid = ids[self._next % len(ids)]
            self._next += 1
            self.samples[sid] = Sample(sid, at, ProbeOutcome.OK, {"latency_ms": 12.0, "cpu": 0.2})

    async def close(self) -> None:
        return None


def bench_config(socket: str, workdir: Path, stats_interval: float) -> Config:
    doc = {
        "daemon": {
            "state_dir": str(workdir / "state"),
            "control_socket": str(workdir / "run" / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            "round_interval": 1.0,
        },
        "load_balancer": {
            "type": "haproxy",
            "haproxy": {"sockets": [socket], "timeout": "5s", "stats_interval": stats_interval},
        },
        "pools": [
            {
                "name": POOL,
                "probe": {"interval": 5.0, "timeout": 1.0, "load_fields": {"cpu": "cpu"}},
                "overload": {
                    "cpu": {"high": 0.9, "low": 0.6},
                    "latency_ms": {"high": 1000, "low": 500},
                },
                "max_drained": 0.4,
            }
        ],
    }
    return parse_config(yaml.safe_dump(doc), "round-cost-config")


@contextmanager
def timed_decide(spent: list[float]) -> Iterator[None]:
    """Record the time of every ``engine.decide`` call the reconciler makes."""
    real = engine.decide

    def decide(*args: object, **kwargs: object) -> object:
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            spent.append(time.perf_counter() - began)

    reconciler_module.engine.decide = decide  # type: ignore[assignment]
    try:
        yield
    finally:
        reconciler_module.engine.decide = real


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"min {1000 * ordered[0]:.1f} / median {1000 * statistics.median(ordered):.1f} / "
        f"p90 {1000 * p90:.1f} / max {1000 * ordered[-1]:.1f} ms"
    )


async def measure(
    servers: int, rounds: int, shares: list[float], profile: bool, stats_interval: float
) -> None:
    binary = find_haproxy()
    if binary is None:
        raise SystemExit("haproxy binary not found in PATH or /usr/sbin")
    with tempfile.TemporaryDirectory(prefix="lbhealthd-round-cost-") as tmp:
        workdir = Path(tmp)
        port = free_port()  # nothing listens there: HAProxy is never asked to connect
        backend = [ServerSpec(f"s{i + 1}", "127.0.0.1", port, 100) for i in range(servers)]
        async with HAProxyProcess(workdir / "haproxy", {POOL: backend}, binary=binary) as lb:
            config = bench_config(lb.socket, workdir, stats_interval)
            store = Store.open(config.daemon.state_dir)
            driver = make_driver(config, state=store.blob(STATE_BLOB))
            probes = StandInProbes()
            metrics = Metrics()
            rec = Reconciler(config, driver, store, probes, metrics=metrics)
            for _ in range(3):  # the first rounds create the states and the targets
                await rec.tick()
                probes.advance(1.0, time.monotonic())
            print(
                f"{servers:,} servers, {rounds} rounds per share, nothing overloaded, "
                f"counters read every {stats_interval:g} s at most"
            )
            for share in shares:
                ticks: list[float] = []
                updates: list[float] = []
                decides: list[float] = []
                profiler = cProfile.Profile() if profile and share == shares[-1] else None
                gc.collect()
                with timed_decide(decides):
                    for _ in range(rounds):
                        probes.advance(share, time.monotonic())
                        if profiler is not None:
                            profiler.enable()
                        began = time.process_time()
                        await rec.tick()
                        ticked = time.process_time()
                        metrics.observe_round(rec.report, ticked - began)
                        ended = time.process_time()
                        if profiler is not None:
                            profiler.disable()
                        ticks.append(ticked - began)
                        updates.append(ended - ticked)
                rounds_cpu = [t + u for t, u in zip(ticks, updates, strict=True)]
                print(f"\nnew samples each round: {share:.0%} of the servers")
                print(f"  CPU per round (tick + metrics): {_ms(rounds_cpu)}")
                print(f"    tick:                         {_ms(ticks)}")
                print(f"    metrics update:               {_ms(updates)}")
                print(f"  decide() (wall, in the rounds): {_ms(decides)}")
                if profiler is not None:
                    print()
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            await rec.close()
            await driver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--new", default="0.0,0.2", help="shares of servers with a new sample")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stats-interval", type=float, default=0.0, help="0: every round")
    args = parser.parse_args(argv)
    shares = [float(s) for s in args.new.split(",")]
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30), cache_logger_on_first_use=True
    )
    print("\n".join(machine(server_uvloop=False)))
    asyncio.run(measure(args.servers, args.rounds, shares, args.profile, args.stats_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
