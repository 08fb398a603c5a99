"""Runs the real daemon in-process against a real HAProxy, with fast timings for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from lbhealthd.config import Config, parse_config
from lbhealthd.daemon.loop import Daemon
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import free_port
from lbhealthd.model import AdminState, Member, ServerId

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
async def running(config: Config) -> AsyncIterator[Daemon]:
    """The daemon running as a task; stopped (and checked for errors) on exit."""
    daemon = Daemon(config)
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
