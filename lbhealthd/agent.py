"""`lbhealthd agent`: report this host's (or container's) load to lbhealthd and to HAProxy.

The agent runs beside one API server and serves two read-only views of the same reading:

- **HTTP** ``GET /health`` → ``{"status": "ok", "cpu": 0.42, "load_per_core": 0.8,
  "memory": 0.55, "cpus": 2.0, "agent": "ready 89%"}``, for the daemon's ``probe.load_fields``.
  Bound to ``--listen`` (loopback by default).
- **HAProxy agent-check** (only with ``--agent-port``): on each connection the agent answers one
  line at once, without waiting for HAProxy's optional ``agent-send`` text, then discards what
  HAProxy sends until it closes (within ``AGENT_TIMEOUT``), so the reply is never reset away.
  HAProxy connects to the server's address (or ``agent-addr``), so the agent's bind address
  (default 127.0.0.1) must be one HAProxy can reach: loopback only works when HAProxy runs on
  the same host.

Readings (each a finite float; a source that fails is left out, never fatal):

- ``cpu``: share of CPU time used, sampled every second in the background. Inside a cgroup v2
  with a CPU quota (``cpu.max``) it is the share of that quota (from ``cpu.stat``), otherwise the
  host's utilisation (psutil).
- ``load_per_core``: 1-minute load average divided by the host's logical CPUs.
- ``memory``: ``memory.current / memory.max`` under a cgroup memory limit, else the host's share.
- ``cpus``: CPUs this process may use: the cgroup quota (``quota / period``) capped by affinity.

The agent-check reply (``agent_reply``) is ``drain`` when cpu >= ``drain_at``, otherwise
``ready N%`` with N falling linearly from 100 at ``full_below`` to ``min_weight`` at
``drain_at``. It always says ``ready`` because only an agent can clear the ``drain`` it set;
the flip side, per HAProxy, is that ``ready`` also clears a drain or maint set on the CLI, which
lbhealthd's daemon sees as ``Member.has_agent``. An unknown cpu reads as ``ready 100%``: an agent
that cannot see the load does not hold traffic away. Percentages apply to the server's configured
weight and truncate, so give agent-checked servers ``weight 100`` (or 256), not the default 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import psutil
import structlog
from aiohttp import web

DEFAULT_LISTEN = "127.0.0.1:9111"
DEFAULT_AGENT_HOST = "127.0.0.1"
DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
SAMPLE_INTERVAL = 1.0
FIRST_SAMPLE = 0.25  # the first CPU share after start, so cpu is known early
AGENT_TIMEOUT = 1.0  # per agent-check connection: write the reply, discard input, close

log = structlog.get_logger("lbhealthd.agent")


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Load:
    """One reading; ``None`` is a field whose source failed or is not known yet."""

    cpu: float | None = None  # share of the CPUs (or cgroup quota) used, 0..1
    load_per_core: float | None = None  # 1-minute load average / logical CPUs
    memory: float | None = None  # share of memory (or of the cgroup limit) used, 0..1
    cpus: float | None = None  # CPUs available: cgroup quota capped by affinity

    def as_dict(self) -> dict[str, float]:
        """The known fields, every one a finite float."""
        out = {}
        for f in fields(self):
            value = _finite(getattr(self, f.name))
            if value is not None:
                out[f.name] = value
        return out


class LoadSource(Protocol):
    """Anything that gives the current load; ``LoadReader`` reads the real one."""

    def read(self) -> Load: ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the agent lowers the weight (above ``full_below``) and drains (at ``drain_at``)."""

    full_below: float = 0.5
    drain_at: float = 0.95
    min_weight: int = 10  # percent of the configured weight, just below drain_at

    def __post_init__(self) -> None:
        if not (math.isfinite(self.full_below) and math.isfinite(self.drain_at)):
            raise ValueError("full_below and drain_at must be finite numbers")
        if not 0.0 <= self.full_below < self.drain_at:
            raise ValueError(
                f"need 0 <= full_below < drain_at, got {self.full_below} and {self.drain_at}"
            )
        if isinstance(self.min_weight, bool) or not 1 <= self.min_weight <= 100:
            raise ValueError(f"min_weight must be a percentage 1..100, got {self.min_weight!r}")


def agent_weight(cpu: float, thresholds: Thresholds) -> int:
    """The weight percentage for ``cpu`` below ``drain_at``: 100 down to ``min_weight``."""
    t = thresholds
    if cpu <= t.full_below:
        return 100
    share = (cpu - t.full_below) / (t.drain_at - t.full_below)
    return max(t.min_weight, min(100, round(100 - share * (100 - t.min_weight))))


def agent_reply(load: Load, thresholds: Thresholds) -> str:
    """The agent-check line for ``load``: ``drain\\n`` or ``ready N%\\n``."""
    cpu = _finite(load.cpu)
    if cpu is None:
        return "ready 100%\n"
    if cpu >= thresholds.drain_at:
        return "drain\n"
    return f"ready {agent_weight(cpu, thresholds)}%\n"


# ---- cgroup v2 ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cgroup:
    """What a cgroup v2 directory limits; ``None`` where there is no limit or no file."""

    cpus: float | None = None  # cpu.max quota / period
    memory: float | None = None  # memory.current / memory.max
    usage_usec: int | None = None  # cpu.stat usage_usec, for the share of the quota used


def parse_cpu_max(text: str) -> float | None:
    """``"200000 100000"`` → 2.0 CPUs; ``"max 100000"`` (no quota) or garbage → None."""
    words = text.split()
    if not words or words[0] == "max":
        return None
    try:
        quota = int(words[0])
        period = int(words[1]) if len(words) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_memory_max(text: str) -> int | None:
    """``"536870912"`` → bytes; ``"max"`` (no limit) or garbage → None."""
    try:
        limit = int(text.strip())
    except ValueError:
        return None
    return limit if limit > 0 else None


def parse_usage_usec(text: str) -> int | None:
    """``usage_usec`` from ``cpu.stat``, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_cgroup(root: Path) -> Cgroup:
    """Read ``cpu.max``, ``cpu.stat``, ``memory.max`` and ``memory.current`` under ``root``."""
    text = _read(root / "cpu.max")
    cpus = parse_cpu_max(text) if text is not None else None
    text = _read(root / "cpu.stat")
    usage = parse_usage_usec(text) if text is not None else None
    memory = None
    limit_text = _read(root / "memory.max")
    current_text = _read(root / "memory.current")
    limit = parse_memory_max(limit_text) if limit_text is not None else None
    if limit is not None and current_text is not None:
        with contextlib.suppress(ValueError):
            memory = max(0, int(current_text.strip())) / limit
    return Cgroup(cpus=cpus, memory=memory, usage_usec=usage)


# ---- the real reader ---------------------------------------------------------------------


def _host_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


class LoadReader:
    """Reads the load of this host, or of its cgroup when the cgroup sets limits.

    ``start()`` runs a background task that samples CPU every ``interval`` seconds; ``read()``
    returns the last CPU sample with fresh load average, memory and CPU count.
    """

    def __init__(
        self,
        cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
        interval: float = SAMPLE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.cgroup_root = Path(cgroup_root)
        self.interval = interval
        self._clock = clock
        self._cpu: float | None = None
        self._primed = False
        self._last_usage: tuple[float, int] | None = None
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def _source(self, name: str, get: Callable[[], float]) -> float | None:
        """Call one source; a failure or a non-finite value leaves the field out."""
        try:
            value = _finite(get())
        except Exception as exc:  # any source may fail in its own way; the agent keeps going
            if name not in self._failing:
                self._failing.add(name)
                log.warning("load_source_failed", source=name, error=repr(exc))
            return None
        self._failing.discard(name)
        return value

    def sample(self) -> None:
        """Take one CPU sample: the share used since the previous call (the first only primes)."""
        host = self._source("cpu", lambda: psutil.cpu_percent(interval=None) / 100.0)
        cgroup = read_cgroup(self.cgroup_root)
        quota_share = None
        if cgroup.cpus is not None and cgroup.usage_usec is not None:
            now = self._clock()
            previous, self._last_usage = self._last_usage, (now, cgroup.usage_usec)
            if previous is not None and now > previous[0]:
                used = (cgroup.usage_usec - previous[1]) / 1e6
                quota_share = used / (now - previous[0]) / cgroup.cpus
        else:
            self._last_usage = None
        if not self._primed:
            self._primed = True
            return
        cpu = quota_share if quota_share is not None else host
        self._cpu = None if cpu is None else min(1.0, max(0.0, cpu))

    def read(self) -> Load:
        cgroup = read_cgroup(self.cgroup_root)
        host_cpus = self._source("cpus", _host_cpus)
        known = [c for c in (cgroup.cpus, host_cpus) if c is not None]
        load_per_core = self._source("load_per_core", lambda: os.getloadavg()[0] / _host_cpus())
        memory = cgroup.memory
        if memory is None:
            memory = self._source("memory", lambda: psutil.virtual_memory().percent / 100.0)
        return Load(
            cpu=self._cpu,
            load_per_core=load_per_core,
            memory=memory,
            cpus=min(known) if known else None,
        )

    async def start(self) -> None:
        """Prime the CPU counters and start sampling in the background."""
        if self._task is not None:
            return
        self.sample()
        self._task = asyncio.create_task(self._run(), name="lbhealthd-agent-sampler")

    async def _run(self) -> None:
        await asyncio.sleep(min(self.interval, FIRST_SAMPLE))
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- serving -----------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); port 0 lets the kernel pick."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 0-65535")
    return host, int(port_text)


class Agent:
    """The HTTP endpoint and, with ``agent_port``, the HAProxy agent-check server."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        agent_port: int | None = None,
        thresholds: Thresholds | None = None,
        *,
        agent_host: str = DEFAULT_AGENT_HOST,
        source: LoadSource | None = None,
        cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
        sample_interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.http_host, self._http_port = parse_listen(listen)
        if agent_port is not None and not 0 <= agent_port < 65536:
            raise ValueError(f"invalid agent port {agent_port}: must be 0-65535")
        self.agent_host = agent_host
        self._agent_port = agent_port
        self.thresholds = thresholds or Thresholds()
        self._reader: LoadReader | None = None
        self.source: LoadSource
        if source is None:
            self.source = self._reader = LoadReader(cgroup_root, sample_interval)
        else:
            self.source = source
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()
        self._last_reply = ""

    @property
    def http_port(self) -> int:
        """The bound HTTP port (the kernel's choice when asked for 0)."""
        return self._http_port

    @property
    def agent_port(self) -> int | None:
        """The bound agent-check port, or None when the agent-check server is off."""
        return self._agent_port

    def load(self) -> Load:
        try:
            return self.source.read()
        except Exception as exc:  # a broken source must not take the endpoints down
            log.warning("load_read_failed", error=repr(exc))
            return Load()

    def reply(self) -> str:
        """The agent-check line for the current load; logged (debug) when it changes."""
        line = agent_reply(self.load(), self.thresholds)
        if line != self._last_reply:
            self._last_reply = line
            log.debug("agent_reply", reply=line.strip())
        return line

    async def start(self) -> None:
        """Bind both servers; on failure nothing is left running."""
        try:
            if self._reader is not None:
                await self._reader.start()
            app = web.Application()
            app.router.add_get("/health", self._health)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.http_host, self._http_port).start()
            self._http_port = int(self._runner.addresses[0][1])
            if self._agent_port is not None:
                self._server = await asyncio.start_server(
                    self._on_agent, self.agent_host, self._agent_port
                )
                self._agent_port = int(self._server.sockets[0].getsockname()[1])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop serving, end open agent connections and the sampler."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._reader is not None:
            await self._reader.stop()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        load = self.load()
        body: dict[str, object] = {"status": "ok", **load.as_dict()}
        body["agent"] = agent_reply(load, self.thresholds).strip()
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _on_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            async with asyncio.timeout(AGENT_TIMEOUT):
                writer.write(self.reply().encode("ascii"))
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                while await reader.read(65536):
                    pass  # agent-send text is read and dropped until HAProxy closes
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(AGENT_TIMEOUT):
                    await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)


async def run_agent(
    listen: str = DEFAULT_LISTEN,
    agent_port: int | None = None,
    thresholds: Thresholds | None = None,
    *,
    agent_host: str = DEFAULT_AGENT_HOST,
    cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
    source: LoadSource | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until ``stop`` is set, or until SIGTERM/SIGINT when no ``stop`` is given.

    Returns the exit code: 0 after a clean stop, 1 when an address could not be bound.
    """
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stopping = stop if stop is not None else asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("agent_stopping", signal=sig.name)
        stopping.set()

    agent = Agent(
        listen,
        agent_port,
        thresholds,
        agent_host=agent_host,
        source=source,
        cgroup_root=cgroup_root,
    )
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await agent.start()
        except OSError as exc:
            log.error("agent_bind_failed", error=str(exc))
            return 1
        t = agent.thresholds
        log.info(
            "agent_started",
            http=f"{agent.http_host}:{agent.http_port}",
            agent=None if agent.agent_port is None else f"{agent.agent_host}:{agent.agent_port}",
            full_below=t.full_below,
            drain_at=t.drain_at,
            min_weight=t.min_weight,
        )
        await stopping.wait()
    finally:
        await agent.close()
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("agent_stopped")
    return 0
