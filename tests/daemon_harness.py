"""Runs the real daemon in-process against a real HAProxy, with fast timings for tests; or only
its reconciler (``Stepped``), round by round on fake clocks, against any driver."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import yaml

from lbhealthd.config import Config, parse_config
from lbhealthd.daemon.loop import Daemon
from lbhealthd.daemon.reconciler import Reconciler
from lbhealthd.drivers import Driver
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import free_port
from lbhealthd.model import AdminState, Member, ServerId
from lbhealthd.probes.scheduler import ProbeScheduler
from lbhealthd.store import Store
from lbhealthd.testing import FakeClock, FakeProbes

FAST: dict[str, Any] = {
    "probe": {"interval": "200ms", "timeout": "150ms", "load_fields": {"cpu": "cpu"}},
    "overload": {"cpu": {"high": 0.9, "low": 0.6}, "latency_ms": {"high": 1000, "low": 500}},
    "fall": 3,
    "rise": 2,
    "min_drain": "1s",
    "slow_start": "1s",
    "max_drained": "40%",
    "min_in_service": 2,
}


def make_config(sockets: list[str], state_dir: Path, **pool: Any) -> Config:
    """A config for pool ``api`` with fast timings; keyword arguments override pool keys."""
    daemon = pool.pop("daemon", {})
    doc = {
        "daemon": {
            "state_dir": str(state_dir),
            "round_interval": "100ms",
            "log_format": "json",
            "control_socket": str(state_dir.parent / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            **daemon,
        },
        "load_balancer": {"type": "haproxy", "haproxy": {"sockets": sockets, "timeout": "1s"}},
        "pools": [{"name": "api", **FAST, **pool}],
    }
    return parse_config(yaml.safe_dump(doc), "test-config")


@asynccontextmanager
async def running(config: Config, path: str | None = None) -> AsyncIterator[Daemon]:
    """The daemon running as a task (reading ``path`` on a reload); stopped (and checked for
    errors) on exit."""
    daemon = Daemon(config, path)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stopping.set()
        await asyncio.wait_for(task, timeout=5)


async def wait_for(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class LBView:
    """Reads HAProxy the way a person would check it: through its admin socket."""

    def __init__(self, socket: str) -> None:
        self.driver = HAProxyDriver([socket], timeout=2.0)

    async def members(self) -> dict[str, Member]:
        snap = await self.driver.snapshot("api")
        return {m.id.server: m for m in snap.members}

    async def states(self) -> dict[str, AdminState]:
        return {name: m.admin for name, m in (await self.members()).items()}

    async def drained(self) -> set[str]:
        return {n for n, s in (await self.states()).items() if s is AdminState.DRAIN}

    async def set_state(self, server: str, state: AdminState) -> None:
        await self.driver.set_state(ServerId("api", server), state)


class Stepped:
    """A Reconciler on ``driver`` (a real HAProxy's, say) with fake clocks and FakeProbes
    for pool ``api``: each ``tick`` advances both clocks by ``step`` and runs one round, so a
    test counts rounds instead of waiting for them."""

    def __init__(self, config: Config, driver: Driver) -> None:
        self.config = config
        self.driver = driver
        self.mono = FakeClock(1000.0)
        self.wall = FakeClock(1_700_000_000.0)
        marks = {k: (m.high, m.low) for k, m in config.pools[0].overload.items()}
        self.probes = FakeProbes(self.mono, pool="api", marks=marks)
        self.store = Store.open(config.daemon.state_dir, clock=self.wall)
        scheduler = cast(ProbeScheduler, self.probes)  # FakeProbes has what it calls
        self.reconciler = Reconciler(
            config, driver, self.store, scheduler, mono=self.mono, wall=self.wall
        )

    async def tick(self, n: int = 1, step: float = 0.2) -> None:
        for _ in range(n):
            self.mono.advance(step)
            self.wall.advance(step)
            await self.reconciler.tick()

    async def close(self) -> None:
        await self.reconciler.close()
        await self.driver.close()


def log_events(log: Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """The JSON events a daemon run as a process wrote to ``log``. ``strict``: every line must
    be one (a line that is not fails the test); else other lines (a traceback) are skipped."""
    events = []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise AssertionError(f"a log line is not JSON: {line!r}") from None
    return events


def logged(log: Path, event: str, *, strict: bool = True) -> bool:
    """Whether ``log`` has an ``event`` yet (for ``wait_for``)."""
    return any(e.get("event") == event for e in log_events(log, strict=strict))


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``lbhealthd run -c config`` as a child process, its (JSON) log in ``log``; the caller
    stops it by its PID."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "lbhealthd", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def run_refused(config: Path) -> subprocess.CompletedProcess[str]:
    """``lbhealthd run -c config`` that must refuse to start: its exit and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "lbhealthd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
