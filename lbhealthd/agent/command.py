"""Running the agent as a command: serve until stopped, logging start, stop and bind failures."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from lbhealthd.agent.load import LoadSource
from lbhealthd.agent.reader import DEFAULT_CGROUP_ROOT
from lbhealthd.agent.reply import Thresholds
from lbhealthd.agent.server import DEFAULT_AGENT_HOST, DEFAULT_LISTEN, Agent
from lbhealthd.agent.window import DEFAULT_WINDOW
from lbhealthd.serving import Limits, listener_cap, raise_soft_limit

log = structlog.get_logger("lbhealthd.agent")  # one logger name for all of the agent's events

MAX_CONNECTIONS = 64  # per listener, lowered to fit half the descriptor limit
IDLE_TIMEOUT = 10.0  # seconds a connection may stay open with no request being served


async def run_agent(
    listen: str = DEFAULT_LISTEN,
    agent_port: int | None = None,
    thresholds: Thresholds | None = None,
    *,
    agent_host: str = DEFAULT_AGENT_HOST,
    cgroup_root: Path | str = DEFAULT_CGROUP_ROOT,
    source: LoadSource | None = None,
    window: float = DEFAULT_WINDOW,
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

    soft, _ = raise_soft_limit()
    listeners = 1 if agent_port is None else 2
    limits = Limits(listener_cap(soft, listeners, MAX_CONNECTIONS), IDLE_TIMEOUT)
    agent = Agent(
        listen,
        agent_port,
        thresholds,
        agent_host=agent_host,
        source=source,
        cgroup_root=cgroup_root,
        window=window,
        limits=limits,
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
            window=window,
            max_connections=limits.connections,
        )
        await stopping.wait()
    finally:
        await agent.close()
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("agent_stopped")
    return 0
