"""The runtime API connection: prompt mode, pipelining, deadlines, reconnects and reloads.

Most tests drive a real HAProxy; the ones about a peer that misbehaves use a small unix-socket
server of the test's own that speaks the prompt framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from lbhealthd.drivers.haproxy.driver import HAProxyDriver, parse_socket
from lbhealthd.drivers.haproxy.process import wait_exit
from lbhealthd.errors import Rejected, Unavailable
from lbhealthd.model import AdminState, ServerId
from tests.fixtures_haproxy import HAProxyHandle

pytestmark = pytest.mark.integration


async def wait_until(cond: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def weights(driver: HAProxyDriver) -> dict[str, int]:
    return {m.id.server: m.weight for m in (await driver.snapshot("api")).members}


async def test_concurrent_commands_share_one_connection(haproxy: HAProxyHandle) -> None:
    """500 commands asked at once travel on one connection, and every one of them lands."""
    driver = HAProxyDriver([haproxy.socket], 5.0)
    try:
        # command i sets server s(i % 5 + 1) to weight i // 5 + 1: each server's last is 100
        await asyncio.gather(
            *(driver.set_weight(ServerId("api", f"s{i % 5 + 1}"), i // 5 + 1) for i in range(500))
        )
        assert driver.connections == 1
        # the last command for each server won: they ran in the order they were asked
        assert await weights(driver) == {f"s{k}": 100 for k in range(1, 6)}
    finally:
        await driver.close()


async def test_each_answer_goes_to_its_own_command(haproxy: HAProxyHandle) -> None:
    """In one pipelined burst, a refused command fails alone and its neighbours take effect."""
    driver = HAProxyDriver([haproxy.socket], 5.0)
    try:
        results = await asyncio.gather(
            driver.set_weight(ServerId("api", "s1"), 11),
            driver.set_weight(ServerId("api", "nosuch"), 12),
            driver.set_state(ServerId("api", "s2"), AdminState.DRAIN),
            driver.command(driver.endpoints[0], "show info"),
            driver.set_weight(ServerId("api", "s3"), 13),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None and results[4] is None
        assert isinstance(results[1], Rejected) and "No such server" in str(results[1])
        assert isinstance(results[3], str) and f"Pid: {haproxy.proc.pid}" in results[3]
        snap = {m.id.server: m for m in (await driver.snapshot("api")).members}
        assert (snap["s1"].weight, snap["s3"].weight) == (11, 13)
        assert snap["s2"].admin is AdminState.DRAIN
        assert driver.connections == 1
    finally:
        await driver.close()


async def test_idle_connection_closes_and_the_next_command_reconnects(
    haproxy: HAProxyHandle,
) -> None:
    """After ``keepalive`` idle seconds the connection is closed; the next command opens one."""
    driver = HAProxyDriver([haproxy.socket], 2.0, keepalive=0.05)
    try:
        await driver.set_weight(ServerId("api", "s1"), 7)
        channel = driver._channels[driver.endpoints[0]]
        await wait_until(lambda: channel.transport is None, 2.0, "the idle connection to close")
        await driver.set_weight(ServerId("api", "s1"), 8)
        assert driver.connections == 2
        assert (await weights(driver))["s1"] == 8
    finally:
        await driver.close()


async def test_restart_under_an_open_connection_is_transparent(haproxy: HAProxyHandle) -> None:
    """HAProxy restarted while a connection is open: the next command reconnects and lands."""
    driver = HAProxyDriver([haproxy.socket], 5.0, keepalive=60.0, max_age=60.0)
    retries: list[int] = []
    driver.on_retry = lambda: retries.append(1)
    try:
        before = await driver.epoch(driver.endpoints[0])
        await haproxy.proc.restart()
        await driver.set_weight(ServerId("api", "s2"), 9)
        assert await driver.epoch(driver.endpoints[0]) != before
        assert (await weights(driver))["s2"] == 9
        assert driver.connections == 2
    finally:
        await driver.close()


async def test_reload_reaches_the_new_process_and_lets_the_old_one_exit(
    haproxy: HAProxyHandle,
) -> None:
    """A connection never outlives ``max_age``: after a reload (``-sf``), commands reach the new
    process within it, and the old process finishes its soft stop although commands keep
    flowing."""
    driver = HAProxyDriver([haproxy.socket], 2.0, keepalive=60.0, max_age=0.3)
    endpoint = driver.endpoints[0]
    try:
        assert f"Pid: {haproxy.proc.pid}\n" in await driver.command(endpoint, "show info")
        old = await haproxy.proc.reload()
        new_pid = haproxy.proc.pid
        assert new_pid is not None and new_pid != old.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        seen_new = False
        while old.poll() is None or not seen_new:
            if loop.time() > deadline:
                pytest.fail(f"old HAProxy alive: {old.poll() is None}, new one seen: {seen_new}")
            reply = await driver.command(endpoint, "show info")
            seen_new = seen_new or f"Pid: {new_pid}\n" in reply
            await asyncio.sleep(0.02)
        assert await wait_exit(old, 1.0)
    finally:
        await driver.close()


async def test_close_closes_the_connection(haproxy: HAProxyHandle) -> None:
    """``close()`` leaves no connection open, and a later command opens a new one."""
    driver = HAProxyDriver([haproxy.socket], 2.0, keepalive=60.0)
    await driver.command(driver.endpoints[0], "show info")
    channel = driver._channels[driver.endpoints[0]]
    await driver.close()
    assert channel.transport is None and not driver._channels
    assert "Pid:" in await driver.command(driver.endpoints[0], "show info")
    await driver.close()


# --- peers that misbehave ------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeSocket:
    """A unix-socket server running ``handler`` per connection; ``close()`` ends every one."""

    def __init__(self, tmp_path: Path, handler: Handler) -> None:
        self.path = tmp_path / "fake.sock"
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def sock(self) -> str:
        return f"unix:{self.path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)  # type: ignore[arg-type]
        try:
            await self.handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> FakeSocket:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def answer_prompt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readline() == b"prompt\n"
    writer.write(b"\n> ")
    await writer.drain()


async def test_a_command_never_answered_times_out(tmp_path: Path) -> None:
    """A prompt, then silence: the command fails with Unavailable within about ``timeout``."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_prompt(reader, writer)
        await reader.read()
        writer.close()

    async with FakeSocket(tmp_path, mute) as fake:
        sock = fake.sock
        driver = HAProxyDriver([sock], 0.5)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(Unavailable, match="timed out waiting for the reply"):
                await driver.set_weight(ServerId("api", "s1"), 5)
            assert 0.4 < loop.time() - start < 1.0
        finally:
            await driver.close()


async def test_a_peer_that_is_not_a_prompt_is_unavailable(tmp_path: Path) -> None:
    """Something that answers ``prompt`` with text is refused, not parsed."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\n> ")
        await writer.drain()
        await reader.read()
        writer.close()

    async with FakeSocket(tmp_path, chatty) as fake:
        sock = fake.sock
        driver = HAProxyDriver([sock], 0.5, attempts=1)
        try:
            with pytest.raises(Unavailable, match="no prompt"):
                await driver.command(parse_socket(sock), "show info")
        finally:
            await driver.close()


async def test_unasked_bytes_drop_the_connection(tmp_path: Path) -> None:
    """An answer with no command waiting means the stream is out of step: the connection is
    dropped and the next command runs on a fresh one, getting its own answer."""
    connections = 0

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_prompt(reader, writer)
        while line := await reader.readline():
            word = line.split()[-1]
            # the first connection answers twice; later ones once
            writer.write(word + b"\n\n> " * (2 if connections == 1 else 1))
            await writer.drain()
        writer.close()

    async with FakeSocket(tmp_path, extra) as fake:
        sock = fake.sock
        driver = HAProxyDriver([sock], 1.0, keepalive=60.0)
        endpoint = parse_socket(sock)
        try:
            assert await driver.command(endpoint, "echo one") == "one\n\n"
            channel = driver._channels[endpoint]
            await wait_until(lambda: channel.transport is None, 2.0, "the out-of-step drop")
            assert await driver.command(endpoint, "echo two") == "two\n\n"
            assert connections == 2
        finally:
            await driver.close()


async def test_a_cancelled_command_does_not_shift_the_answers(tmp_path: Path) -> None:
    """A caller that gives up mid-command keeps its place: its late answer is dropped and the
    next command on the same connection gets its own."""

    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_prompt(reader, writer)
        while line := await reader.readline():
            word = line.split()[-1]
            if word == b"slow":
                await asyncio.sleep(0.3)
            writer.write(word + b"\n\n> ")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        writer.close()

    async with FakeSocket(tmp_path, slow_echo) as fake:
        sock = fake.sock
        driver = HAProxyDriver([sock], 2.0, keepalive=60.0)
        endpoint = parse_socket(sock)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await driver.command(endpoint, "echo slow")
            assert await driver.command(endpoint, "echo fast") == "fast\n\n"
            assert driver.connections == 1
        finally:
            await driver.close()


async def test_an_oversized_answer_is_unavailable(tmp_path: Path) -> None:
    """An answer beyond the reply cap drops the connection instead of growing without bound."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_prompt(reader, writer)
        await reader.readline()
        chunk = b"x" * 65536
        try:
            for _ in range(100):  # 6.5 MB, over the 4 MB cap; bounded either way
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async with FakeSocket(tmp_path, flood) as fake:
        sock = fake.sock
        driver = HAProxyDriver([sock], 3.0, attempts=1)
        try:
            with pytest.raises(Unavailable, match="larger than"):
                await driver.command(parse_socket(sock), "show stat")
        finally:
            await driver.close()
