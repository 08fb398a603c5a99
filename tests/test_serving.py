"""The listeners' limits on loopback: a cap that evicts the longest idle connection, an idle
timeout, accept() failures logged once per interval, and the descriptor budget."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from lbhealthd.serving import ConnectionGuard, Limits, Listener, listener_cap, tcp_sockets
from lbhealthd.serving.fd_limit import wanted_soft_limit
from lbhealthd.testing import FakeClock
from tests.daemon_harness import wait_for


@asynccontextmanager
async def serving(
    limits: Limits, handler: Callable[[web.Request], Any] | None = None
) -> AsyncIterator[tuple[ConnectionGuard, int]]:
    """An aiohttp app answering GET / (with ``handler``, or "ok") behind a guarded listener."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    guard = ConnectionGuard("test", limits)
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", handler or ok)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    assert runner.server is not None
    listener = Listener(guard, runner.server, tcp_sockets("127.0.0.1", 0))
    listener.start()
    try:
        yield guard, int(listener.addresses[0][1])
    finally:
        await listener.close()
        await runner.cleanup()
        guard.abort_all()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def get(port: int, writer_reader: Any = None) -> bytes:
    """GET / (on a new connection, or on ``writer_reader``) and return the status line."""
    reader, writer = writer_reader or await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    if writer_reader is None:
        writer.close()
    return line.strip()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (it sends nothing)."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_idle_connections_beyond_the_cap_make_room_and_a_request_is_answered() -> None:
    """Five connections that send nothing, cap three: the two oldest are closed by the server,
    three stay open, a real request still gets its answer, and the eviction is logged once."""
    with capture_logs() as logs:
        async with serving(Limits(connections=3, idle_timeout=30)) as (guard, port):
            idle = []
            for n in range(5):
                idle.append(await connect(port))
                await wait_for(lambda n=n: guard.open == min(n + 1, 3), 5, "accepted")
            assert await closed_by_server(idle[0][0], 5)
            assert await closed_by_server(idle[1][0], 5)
            assert guard.open == 3
            assert await get(port) == b"HTTP/1.1 200 OK"
            for _, w in idle:
                w.close()
    (limited,) = [e for e in logs if e["event"] == "connections_limited"]
    assert limited["listener"] == "test" and limited["evicted"] == 1  # the first; the rest later
    # every eviction, for metrics: two idle ones, then one more to make room for the GET
    assert guard.totals == {"evicted": 3, "refused": 0, "idle_closed": 0}
    text = listener_metrics(guard)
    closed = 'lbhealthd_listener_connections_closed_total{listener="test",reason="evicted"}'
    assert f"{closed} 3.0" in text
    assert 'lbhealthd_listener_connections{listener="test"} 0.0' in text  # all closed by now


def listener_metrics(guard: ConnectionGuard) -> str:
    """What /metrics shows of the listener ``guard`` guards."""
    from prometheus_client import generate_latest

    from lbhealthd.daemon.metrics import Metrics

    metrics = Metrics()
    metrics.listeners.watch(guard)
    return generate_latest(metrics.registry).decode()


async def test_when_every_connection_is_being_served_the_next_waits_its_turn() -> None:
    """Cap two, two requests being served: a third connection is not taken in (it waits in the
    listen queue, holding no descriptor of the daemon's) until one of them is answered."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    async with serving(Limits(connections=2, idle_timeout=30), slow) as (guard, port):
        first = [asyncio.create_task(get(port)) for _ in range(2)]
        await wait_for(lambda: guard.full, 5, "two requests being served")
        third = asyncio.create_task(get(port))
        await asyncio.sleep(0)  # let it connect: the kernel queues it
        assert guard.open == 2 and not third.done()
        release.set()
        assert await asyncio.gather(*first, third) == [b"HTTP/1.1 200 OK"] * 3


@pytest.mark.parametrize("behaviour", ["silent", "slow headers", "kept alive"])
async def test_a_connection_with_no_request_being_served_is_closed_after_the_idle_timeout(
    behaviour: str,
) -> None:
    """Whether it never sends a request, trickles its headers or sits kept alive after an
    answer, a connection is closed once idle for idle_timeout, not before."""
    async with serving(Limits(connections=8, idle_timeout=0.3)) as (guard, port):
        reader, writer = await connect(port)
        if behaviour == "kept alive":
            assert await get(port, (reader, writer)) == b"HTTP/1.1 200 OK"
            await reader.readuntil(b"ok")
        idle_from = time.monotonic()
        if behaviour == "slow headers":  # a byte every 50 ms, until the server hangs up
            head = b"GET / HTTP/1.1\r\nX-Slow: " + b"y" * 200
            sent = 0
            while not await closed_by_server(reader, 0.05):
                assert sent < len(head), "the server kept a trickling request open"
                writer.write(head[sent : sent + 1])
                sent += 1
        else:
            assert await closed_by_server(reader, 5)
        assert time.monotonic() - idle_from >= 0.3 - 0.05
        await wait_for(lambda: guard.open == 0, 5, "forgotten")
        writer.close()
        assert guard.totals["idle_closed"] == 1


async def test_a_request_served_longer_than_the_idle_timeout_is_answered() -> None:
    """The idle timeout never cuts a request being served (here three times as long)."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(text="ok")

    async with serving(Limits(connections=8, idle_timeout=0.2), slow) as (_, port):
        assert await get(port) == b"HTTP/1.1 200 OK"


async def test_failing_accepts_are_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """accept() failing with EMFILE fifty times in a row is one accept_failed line counting
    them; the next line comes only after the interval; connections are served after."""
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    real = loop.sock_accept
    failures = {"left": 50}

    async def failing(sock: socket.socket) -> tuple[socket.socket, Any]:
        if failures["left"]:
            failures["left"] -= 1
            if failures["left"] == 10:
                clock.advance(60)
            raise OSError(errno.EMFILE, "Too many open files")
        return await real(sock)

    monkeypatch.setattr(loop, "sock_accept", failing)
    guard = ConnectionGuard("test", Limits(connections=4, idle_timeout=30))
    listener = Listener(guard, asyncio.Protocol, tcp_sockets("127.0.0.1", 0), retry=0, clock=clock)
    with capture_logs() as logs:
        listener.start()
        try:
            _, writer = await connect(int(listener.addresses[0][1]))
            await wait_for(lambda: guard.open == 1, 5, "accepted after the failures")
            writer.close()
        finally:
            await listener.close()
            guard.abort_all()
    lines = [e for e in logs if e["event"] == "accept_failed"]
    assert [e["failures"] for e in lines] == [1, 39]
    assert lines[0]["errno"] == "EMFILE" and lines[0]["listener"] == "test"


@pytest.mark.parametrize(
    ("soft", "hard", "wanted"),
    [
        (1024, 524288, 65536),
        (1024, 4096, 4096),
        (1024, resource.RLIM_INFINITY, 65536),
        (100000, 524288, 100000),
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    ],
    ids=["systemd default", "low hard limit", "no hard limit", "already higher", "unlimited"],
)
def test_the_soft_limit_wanted(soft: int, hard: int, wanted: int) -> None:
    """The hard limit, at most 65536, never lower than the soft limit already is."""
    assert wanted_soft_limit(soft, hard) == wanted


@pytest.mark.parametrize(
    ("soft", "listeners", "configured", "cap"),
    [(65536, 2, 64, 64), (256, 2, 64, 64), (128, 2, 64, 32), (3, 2, 64, 1)],
    ids=["plenty", "exactly half", "halved", "at least one"],
)
def test_the_listeners_take_at_most_half_the_descriptors(
    soft: int, listeners: int, configured: int, cap: int
) -> None:
    """Each listener gets its configured cap, or less so that all of them hold at most half of
    the soft limit (the other half is the LB's, state_dir's and the probes')."""
    assert listener_cap(soft, listeners, configured) == cap


def test_the_soft_limit_is_raised_to_the_hard_one_at_start() -> None:
    """In a process started with soft 64 and hard 4096, the soft limit becomes 4096."""
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))\n"
        "from lbhealthd.serving import raise_soft_limit\n"
        "print(*raise_soft_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["4096", "4096", "4096", "4096"]
