"""The HTTP probers against real loopback servers: aiohttp.web apps and misbehaving raw sockets.

Every behaviour test runs against both probers (the ``prober_cls`` fixture): the aiohttp-based
HttpProber and the Protocol-based FastProber must turn every server behaviour into the same
Sample."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from aiohttp import web

from lbhealthd.model import AdminState, Member, OpState, ProbeOutcome, Sample, ServerId
from lbhealthd.probes.aiohttp_prober import HttpProber, render_url, validate_url_template
from lbhealthd.probes.http_prober import FastProber
from lbhealthd.probes.lbstats import lb_signals, merge

SERVER = ServerId("api", "s1")
MAX_BODY = 65536
SLACK = 0.5  # how far past its timeout a probe may end

Prober = HttpProber | FastProber
ProberClass = type[HttpProber] | type[FastProber]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A loopback aiohttp server whose answers a test sets and which records what it saw."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: list[str] = []
        self.peer_ports: list[int] = []
        self.release = asyncio.Event()
        self.hanging = asyncio.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(
        self,
        path: str,
        body: bytes | str = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> str:
        """Answer ``path`` with a fixed response and return its URL."""
        data = body.encode() if isinstance(body, str) else body

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.Response(body=data, status=status, headers=headers)
            if close:
                response.force_close()
            return response

        self.routes[path] = handler
        return self.url(path)

    def hang(self, path: str) -> str:
        """Make ``path`` never answer (until the test ends) and return its URL."""

        async def handler(request: web.Request) -> web.StreamResponse:
            self.hanging.set()
            await self.release.wait()
            return web.Response()

        self.routes[path] = handler
        return self.url(path)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peer_ports.append(peer[1] if peer else -1)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(request)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.fixture(params=[HttpProber, FastProber], ids=["aiohttp", "fast"])
def prober_cls(request: pytest.FixtureRequest) -> ProberClass:
    """Each prober class in turn: every behaviour test runs against both."""
    cls: ProberClass = request.param
    return cls


@pytest.fixture
async def prober(prober_cls: ProberClass) -> AsyncIterator[Prober]:
    async with prober_cls(max_body=MAX_BODY) as instance:
        yield instance


@asynccontextmanager
async def raw_server(handler: RawHandler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serve ``handler`` on a loopback port (yielded); cancel its connections on exit."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@contextmanager
def closed_port() -> Iterator[int]:
    """Yield a loopback port that is bound but not listening, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def run_probe(
    prober: Prober,
    url: str,
    fields: dict[str, str] | None = None,
    within: float = 2.0,
) -> Sample:
    loop = asyncio.get_running_loop()
    return await prober.probe(SERVER, url, within, fields or {}, loop.time)


async def timed_probe(
    prober: Prober, url: str, within: float, fields: dict[str, str] | None = None
) -> tuple[Sample, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within + 5.0):  # a prober that ignores its timeout fails, not hangs
        sample = await run_probe(prober, url, fields, within)
    return sample, loop.time() - started


# --- answers that are good ---------------------------------------------------------------------


async def test_ok_reads_load_fields(upstream: Upstream, prober: Prober) -> None:
    """A JSON body yields one signal per configured field, plus the latency."""
    body = json.dumps({"cpu": 0.5, "inflight": 3, "load": {"queue": 2}})
    url = upstream.reply("/health", body)
    fields = {"cpu": "cpu", "inflight": "inflight", "queue": "load.queue"}
    before = asyncio.get_running_loop().time()
    sample = await run_probe(prober, url, fields)
    assert sample.outcome is ProbeOutcome.OK, sample.detail
    assert sample.server == SERVER
    assert sample.at >= before
    assert sample.detail == ""
    assert {k: v for k, v in sample.signals.items() if k != "latency_ms"} == {
        "cpu": 0.5,
        "inflight": 3.0,
        "queue": 2.0,
    }
    assert 0 <= sample.signals["latency_ms"] < 2000


async def test_missing_field_leaves_signal_out(upstream: Upstream, prober: Prober) -> None:
    """A configured field absent from the body leaves its signal out and is named in detail."""
    url = upstream.reply("/health", json.dumps({"cpu": 0.2, "load": {}}))
    fields = {"cpu": "cpu", "mem": "memory", "queue": "load.queue"}
    sample = await run_probe(prober, url, fields)
    assert sample.outcome is ProbeOutcome.OK
    assert set(sample.signals) == {"latency_ms", "cpu"}
    assert "memory" in sample.detail
    assert "load.queue" in sample.detail


async def test_literal_dotted_key_wins(upstream: Upstream, prober: Prober) -> None:
    """A top-level key that contains a dot is read as it is before any nested lookup."""
    url = upstream.reply("/health", json.dumps({"load.cpu": 0.7, "load": {"cpu": 0.1}}))
    sample = await run_probe(prober, url, {"cpu": "load.cpu"})
    assert sample.signals["cpu"] == 0.7


async def test_plain_body_without_fields_is_ok(upstream: Upstream, prober: Prober) -> None:
    """Without load fields any 2xx body is fine, JSON or not."""
    sample = await run_probe(prober, upstream.reply("/health", "OK\n"))
    assert sample.outcome is ProbeOutcome.OK
    assert set(sample.signals) == {"latency_ms"}


async def test_latency_uses_the_given_clock(upstream: Upstream, prober: Prober) -> None:
    """Sample.at is the clock at the start and latency runs from there to the end of the body."""
    readings = iter([100.0])

    def clock() -> float:
        return next(readings, 100.25)

    url = upstream.reply("/health", "OK")
    sample = await prober.probe(SERVER, url, 2.0, {}, clock)
    assert sample.at == 100.0
    assert sample.signals["latency_ms"] == pytest.approx(250.0)


# --- bodies that are refused -------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b'{"cpu": "\xff"}', {"cpu": "cpu"}, "UTF-8", id="invalid-utf8"),
    pytest.param(b'{"cpu": ', {"cpu": "cpu"}, "not valid JSON", id="invalid-json"),
    pytest.param(b"", {"cpu": "cpu"}, "not valid JSON", id="empty"),
    pytest.param(b"[1, 2]", {"cpu": "cpu"}, "an array, not a JSON object", id="top-level-list"),
    pytest.param(b"0.5", {"cpu": "cpu"}, "a number, not a JSON object", id="top-level-number"),
    pytest.param(b"[" * 60000, {"cpu": "cpu"}, "not valid JSON", id="deeply-nested"),
    pytest.param(b'{"cpu": NaN}', {"cpu": "cpu"}, "'cpu' is nan", id="nan"),
    pytest.param(b'{"cpu": Infinity}', {"cpu": "cpu"}, "'cpu' is inf", id="infinity"),
    pytest.param(b'{"cpu": -Infinity}', {"cpu": "cpu"}, "'cpu' is -inf", id="minus-infinity"),
    pytest.param(b'{"cpu": 1e400}', {"cpu": "cpu"}, "'cpu' is inf", id="float-overflow"),
    pytest.param(b'{"cpu": -0.1}', {"cpu": "cpu"}, "'cpu' is negative", id="negative"),
    pytest.param(b'{"cpu": 1e13}', {"cpu": "cpu"}, "'cpu' is too large", id="huge-float"),
    pytest.param(b'{"cpu": ' + b"9" * 40 + b"}", {"cpu": "cpu"}, "too large", id="huge-int"),
    pytest.param(b'{"cpu": true}', {"cpu": "cpu"}, "'cpu' is a boolean", id="bool"),
    pytest.param(b'{"cpu": "0.5"}', {"cpu": "cpu"}, "'cpu' is a string", id="string"),
    pytest.param(b'{"cpu": null}', {"cpu": "cpu"}, "'cpu' is null", id="null"),
    pytest.param(b'{"cpu": [1]}', {"cpu": "cpu"}, "'cpu' is an array", id="array"),
    pytest.param(
        b'{"load": {"cpu": null}}', {"cpu": "load.cpu"}, "'load.cpu' (signal cpu)", id="nested"
    ),
]


@pytest.mark.parametrize(("body", "fields", "expected"), BAD_BODIES)
async def test_bad_body(
    upstream: Upstream, prober: Prober, body: bytes, fields: dict[str, str], expected: str
) -> None:
    """A body that cannot be trusted fails the probe with BAD_BODY saying why."""
    url = upstream.reply("/health", body, headers={"Content-Type": "application/json"})
    sample = await run_probe(prober, url, fields)
    assert sample.outcome is ProbeOutcome.BAD_BODY
    assert expected in sample.detail
    assert "cpu" not in sample.signals
    assert "latency_ms" in sample.signals


@pytest.mark.parametrize(
    ("status", "fields", "outcome"),
    [
        pytest.param("fail", {"cpu": "cpu"}, ProbeOutcome.BAD_BODY, id="fail"),
        pytest.param("ERROR", {"cpu": "cpu"}, ProbeOutcome.BAD_BODY, id="error-uppercase"),
        pytest.param("Down", {}, ProbeOutcome.BAD_BODY, id="down-without-fields"),
        pytest.param("ok", {"cpu": "cpu"}, ProbeOutcome.OK, id="ok"),
        pytest.param("degraded", {}, ProbeOutcome.OK, id="other-status"),
    ],
)
async def test_status_document(
    upstream: Upstream,
    prober: Prober,
    status: str,
    fields: dict[str, str],
    outcome: ProbeOutcome,
) -> None:
    """A 200 whose JSON body reports status fail, error or down is a failed probe."""
    url = upstream.reply("/health", json.dumps({"status": status, "cpu": 0.1}))
    sample = await run_probe(prober, url, fields)
    assert sample.outcome is outcome
    if outcome is ProbeOutcome.BAD_BODY:
        assert f"health body reports status='{status}'" in sample.detail


@pytest.mark.parametrize(
    ("size", "outcome"),
    [
        pytest.param(64, ProbeOutcome.OK, id="at-the-cap"),
        pytest.param(65, ProbeOutcome.BAD_BODY, id="one-byte-over"),
    ],
)
async def test_body_cap_boundary(
    upstream: Upstream, prober_cls: ProberClass, size: int, outcome: ProbeOutcome
) -> None:
    """A body of exactly max_body bytes is read; one byte more is refused."""
    body = b'{"cpu": 1}'.ljust(size)
    async with prober_cls(max_body=64) as small:
        sample = await run_probe(small, upstream.reply("/health", body), {"cpu": "cpu"})
    assert sample.outcome is outcome
    if outcome is ProbeOutcome.BAD_BODY:
        assert sample.detail == "body larger than 64 bytes"


# --- huge, endless and trickling answers -------------------------------------------------------

HUGE = 256 * 1024 * 1024


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: %d\r\n" % HUGE, id="declared-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", id="chunked"),
        pytest.param(b"Connection: close\r\n", id="until-close"),
    ],
)
async def test_huge_body_is_not_buffered(prober: Prober, framing: bytes) -> None:
    """A 256 MB body is refused at the cap, quickly, while the server manages to send little."""
    sent = 0
    done = asyncio.Event()
    block = b"x" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        try:
            while sent < HUGE:
                writer.write(chunked(block) if b"chunked" in framing else block)
                await writer.drain()
                sent += len(block)
        finally:
            done.set()

    async with raw_server(handler) as port:
        sample, elapsed = await timed_probe(prober, f"http://127.0.0.1:{port}/", 5.0)
        await asyncio.wait_for(done.wait(), 5.0)
    assert sample.outcome is ProbeOutcome.BAD_BODY
    assert sample.detail == f"body larger than {MAX_BODY} bytes"
    assert elapsed < 2.0
    assert sent < HUGE // 8, f"the prober let the server push {sent} bytes"


@pytest.mark.parametrize(
    ("pause", "step", "outcome"),
    [
        pytest.param(0.0, 4096, ProbeOutcome.BAD_BODY, id="endless-fast"),
        pytest.param(0.05, 1, ProbeOutcome.TIMEOUT, id="endless-trickle"),
    ],
)
async def test_endless_chunked_body(
    prober: Prober, pause: float, step: int, outcome: ProbeOutcome
) -> None:
    """A chunked body that never ends stops at the cap or at the timeout, whichever comes first."""
    timeout = 0.5

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(chunked(b"7" * step))
            await writer.drain()
            await asyncio.sleep(pause)

    async with raw_server(handler) as port:
        sample, elapsed = await timed_probe(prober, f"http://127.0.0.1:{port}/", timeout)
    assert sample.outcome is outcome
    assert elapsed < timeout + SLACK


async def test_headers_one_byte_at_a_time_time_out(prober: Prober) -> None:
    """Headers trickled a byte at a time cannot stretch a probe past its timeout."""
    timeout = 0.6
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for index in range(len(head)):
            writer.write(head[index : index + 1])
            await writer.drain()
            await asyncio.sleep(0.1)

    async with raw_server(handler) as port:
        sample, elapsed = await timed_probe(prober, f"http://127.0.0.1:{port}/", timeout)
    assert sample.outcome is ProbeOutcome.TIMEOUT
    assert "0.6s" in sample.detail
    assert timeout - 0.05 <= elapsed < timeout + SLACK
    assert sample.signals == {}


async def test_silent_server_times_out(upstream: Upstream, prober: Prober) -> None:
    """A server that never answers gives TIMEOUT right after the timeout."""
    sample, elapsed = await timed_probe(prober, upstream.hang("/health"), 0.3)
    assert sample.outcome is ProbeOutcome.TIMEOUT
    assert elapsed < 0.3 + SLACK


async def test_cancellation_propagates(upstream: Upstream, prober: Prober) -> None:
    """Cancelling a probe cancels it; it is not turned into a sample."""
    url = upstream.hang("/health")
    task = asyncio.create_task(run_probe(prober, url, within=30.0))
    await asyncio.wait_for(upstream.hanging.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- statuses, redirects and broken servers ----------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 404, 204], ids=str)
async def test_http_status(upstream: Upstream, prober: Prober, status: int) -> None:
    """A status other than 2xx is HTTP_STATUS with the code; 2xx is OK."""
    sample = await run_probe(prober, upstream.reply("/health", status=status))
    if status == 204:
        assert sample.outcome is ProbeOutcome.OK
        return
    assert sample.outcome is ProbeOutcome.HTTP_STATUS
    assert sample.detail == f"HTTP {status}"
    assert "latency_ms" in sample.signals


@pytest.mark.parametrize("status", [301, 302, 307, 308], ids=str)
async def test_redirect_is_not_followed(upstream: Upstream, prober: Prober, status: int) -> None:
    """A redirect fails the probe and its target is never requested."""
    target = upstream.reply("/moved", "OK")
    url = upstream.reply("/health", status=status, headers={"Location": target})
    sample = await run_probe(prober, url)
    assert sample.outcome is ProbeOutcome.HTTP_STATUS
    assert f"HTTP {status}" in sample.detail
    assert "redirect" in sample.detail
    assert "not followed" in sample.detail
    assert upstream.hits == ["/health"]


async def test_refused(prober: Prober) -> None:
    """Nothing listening on the port gives REFUSED."""
    with closed_port() as port:
        sample = await run_probe(prober, f"http://127.0.0.1:{port}/health")
    assert sample.outcome is ProbeOutcome.REFUSED
    assert sample.signals == {}


BROKEN = [
    pytest.param(b"", "ServerDisconnectedError", id="closes-without-answer"),
    pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "Error", id="not-http"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "Error", id="truncated"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKgarbage", "Error", id="junk-after-answer"
    ),
]


@pytest.mark.parametrize(("answer", "expected"), BROKEN)
async def test_broken_server_is_an_error(prober: Prober, answer: bytes, expected: str) -> None:
    """A server that breaks the protocol gives ERROR naming the exception, without a traceback."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with raw_server(handler) as port:
        sample = await run_probe(prober, f"http://127.0.0.1:{port}/health")
    assert sample.outcome is ProbeOutcome.ERROR
    assert expected in sample.detail
    assert "Traceback" not in sample.detail
    assert "\n" not in sample.detail


async def test_invalid_url_is_an_error(prober: Prober) -> None:
    """An unusable URL gives an ERROR sample, not an exception."""
    sample = await run_probe(prober, "http:///no-host")
    assert sample.outcome is ProbeOutcome.ERROR
    assert sample.detail


# --- connections -------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(upstream: Upstream, prober: Prober) -> None:
    """Several probes of one server travel over one kept-alive connection."""
    url = upstream.reply("/health", '{"cpu": 0.1}')
    samples = [await run_probe(prober, url, {"cpu": "cpu"}) for _ in range(4)]
    assert [s.outcome for s in samples] == [ProbeOutcome.OK] * 4
    assert len(upstream.peer_ports) == 4
    assert len(set(upstream.peer_ports)) == 1


async def test_reconnects_when_server_closes(upstream: Upstream, prober: Prober) -> None:
    """A server that closes after each answer gets a fresh connection per probe."""
    url = upstream.reply("/health", "OK", close=True)
    samples = [await run_probe(prober, url) for _ in range(3)]
    assert [s.outcome for s in samples] == [ProbeOutcome.OK] * 3
    assert len(set(upstream.peer_ports)) == 3


async def test_reconnects_after_idle_close(prober: Prober) -> None:
    """A kept-alive connection the server dropped while idle is replaced, and the probe is OK."""
    connections = 0
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nOK")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with raw_server(handler) as port:
        url = f"http://127.0.0.1:{port}/health"
        first = await run_probe(prober, url)
        await asyncio.wait_for(closed.wait(), 5.0)
        second = await run_probe(prober, url)
    assert (first.outcome, second.outcome) == (ProbeOutcome.OK, ProbeOutcome.OK)
    assert connections == 2


def answer_then_close(first_only: bool) -> tuple[RawHandler, Callable[[], int]]:
    """A server that answers the first request of its first connection (of every connection
    unless ``first_only``) and closes any connection on its next request without answering,
    as a server does that closed a kept-alive connection just as the request was sent."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        if first_only and connections > 1:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        await writer.drain()
        await read_request(reader)

    return handler, lambda: connections


async def test_retries_once_when_a_reused_connection_was_closed(prober: Prober) -> None:
    """A request lost on a kept-alive connection the server closed is sent again, once."""
    handler, connections = answer_then_close(first_only=False)
    async with raw_server(handler) as port:
        url = f"http://127.0.0.1:{port}/health"
        samples = [await run_probe(prober, url) for _ in range(3)]
    assert [s.outcome for s in samples] == [ProbeOutcome.OK] * 3
    assert connections() == 3


async def test_does_not_retry_twice(prober: Prober) -> None:
    """When the retried request is closed on too, the probe is an ERROR: no endless retries."""
    handler, connections = answer_then_close(first_only=True)
    async with raw_server(handler) as port:
        url = f"http://127.0.0.1:{port}/health"
        first = await run_probe(prober, url)
        second = await run_probe(prober, url)
    assert (first.outcome, second.outcome) == (ProbeOutcome.OK, ProbeOutcome.ERROR)
    assert "ServerDisconnectedError" in second.detail
    assert connections() == 2


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_literal(prober: Prober) -> None:
    """A bracketed IPv6 literal is probed over IPv6, with the Host header bracketed too."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"cpu": 1}')
        await writer.drain()

    async with raw_server(handler, host="::1") as port:
        sample = await run_probe(prober, f"http://[::1]:{port}/health", {"cpu": "cpu"})
    assert sample.outcome is ProbeOutcome.OK, sample.detail
    assert sample.signals["cpu"] == 1.0
    assert f"Host: [::1]:{port}\r\n".encode() in heads[0]


async def test_https_is_probed(prober: Prober) -> None:
    """An https:// URL is probed (FastProber hands it to the aiohttp prober): refused here."""
    with closed_port() as port:
        sample = await run_probe(prober, f"https://127.0.0.1:{port}/health")
    assert sample.outcome is ProbeOutcome.REFUSED


async def test_close_ends_probes_in_flight(upstream: Upstream, prober_cls: ProberClass) -> None:
    """Closing the prober ends a probe in flight as an ERROR at once, not at its timeout."""
    prober = prober_cls()
    task = asyncio.create_task(run_probe(prober, upstream.hang("/health"), within=30.0))
    await asyncio.wait_for(upstream.hanging.wait(), 5.0)
    await prober.close()
    async with asyncio.timeout(5.0):
        sample = await task
    assert sample.outcome is ProbeOutcome.ERROR


@contextmanager
def full_accept_queue() -> Iterator[int]:
    """Yield a loopback port whose accept queue is full, so that a new connection hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):  # Linux queues backlog + 1 connections; the rest wait for SYN-ACK
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_that_hangs_times_out(prober: Prober) -> None:
    """A connection that is never accepted gives TIMEOUT at the probe's timeout."""
    with full_accept_queue() as port:
        sample, elapsed = await timed_probe(prober, f"http://127.0.0.1:{port}/health", 0.4)
    assert sample.outcome is ProbeOutcome.TIMEOUT
    assert elapsed < 0.4 + SLACK


async def test_fast_prober_connect_timeout() -> None:
    """FastProber's connect_timeout bounds connecting within the probe's own timeout."""
    async with FastProber(connect_timeout=0.2) as prober:
        with full_accept_queue() as port:
            sample, elapsed = await timed_probe(prober, f"http://127.0.0.1:{port}/", 5.0)
    assert sample.outcome is ProbeOutcome.TIMEOUT
    assert sample.detail == "no connection within 0.2s"
    assert 0.15 <= elapsed < 0.2 + SLACK


async def test_closed_prober_refuses_to_probe(prober_cls: ProberClass) -> None:
    """Probing after close() is a programming error, not a failed sample."""
    prober = prober_cls()
    await prober.close()
    with pytest.raises(RuntimeError, match="closed"):
        await run_probe(prober, "http://127.0.0.1:1/")


# --- URL templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "address", "expected"),
    [
        pytest.param(
            "http://{address}:{port}/health", "10.0.0.7", "http://10.0.0.7:8080/health", id="ipv4"
        ),
        pytest.param(
            "http://{address}:{port}/health", "fd00::7", "http://[fd00::7]:8080/health", id="ipv6"
        ),
        pytest.param("http://{address}/", "[::1]", "http://[::1]/", id="ipv6-bracketed"),
        pytest.param(
            "https://{name}.svc:{port}/h?s={name}",
            "10.0.0.7",
            "https://s1.svc:8080/h?s=s1",
            id="name-twice",
        ),
        pytest.param("http://{address}/{{x}}", "h", "http://h/{x}", id="escaped-braces"),
    ],
)
def test_render_url(template: str, address: str, expected: str) -> None:
    """Placeholders are filled and IPv6 addresses are bracketed."""
    assert render_url(template, name="s1", address=address, port=8080) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param("http://{host}:{port}/", "{host}", id="unknown"),
        pytest.param("http://{0}/", "{0}", id="positional"),
        pytest.param("http://{}/", "{}", id="empty"),
        pytest.param("http://{address}:{port:d}/", "{port:d}", id="format-spec"),
        pytest.param("http://{address!r}/", "{address!r}", id="conversion"),
        pytest.param("http://{address/", "'http://{address/'", id="unbalanced"),
        pytest.param("http://address}/", "'http://address}/'", id="stray-close"),
    ],
)
def test_render_url_refuses(template: str, message: str) -> None:
    """An unknown placeholder or a malformed template raises ValueError naming it."""
    with pytest.raises(ValueError, match=re.escape(message)):
        render_url(template, name="s1", address="10.0.0.7", port=80)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param("http://{address}:{port}/health", None, id="http"),
        pytest.param("https://{name}.example/health", None, id="https"),
        pytest.param("ftp://{address}/health", "http:// or https://", id="ftp"),
        pytest.param("{address}:{port}/health", "http:// or https://", id="no-scheme"),
        pytest.param("http:///health", "no host", id="no-host"),
        pytest.param("http://{address}:99999/", "out of range", id="bad-port"),
        pytest.param("http://{bogus}/", "bogus", id="unknown-placeholder"),
    ],
)
def test_validate_url_template(template: str, message: str | None) -> None:
    """A template is accepted only when it renders to an http(s) URL with a host."""
    if message is None:
        validate_url_template(template)
        return
    with pytest.raises(ValueError, match=message):
        validate_url_template(template)


# --- the LB's own counters ---------------------------------------------------------------------


def make_member(queue: int = 4, sessions: int = 20, rate: int = 7) -> Member:
    return Member(
        id=SERVER,
        address="10.0.0.7",
        port=8080,
        admin=AdminState.READY,
        op=OpState.UP,
        weight=100,
        initial_weight=100,
        sessions=sessions,
        queue=queue,
        session_rate=rate,
    )


def test_lb_signals() -> None:
    """The LB's queue, sessions and session rate become lb_* signals."""
    assert lb_signals(make_member()) == {"lb_queue": 4.0, "lb_sessions": 20.0, "lb_rate": 7.0}


@pytest.mark.parametrize("outcome", [ProbeOutcome.OK, ProbeOutcome.TIMEOUT], ids=str)
def test_merge_adds_lb_signals(outcome: ProbeOutcome) -> None:
    """Merging adds the LB's signals and keeps the probe's outcome, detail and signals."""
    sample = Sample(SERVER, 5.0, outcome, {"latency_ms": 12.0}, "why")
    merged = merge(sample, make_member())
    assert merged.outcome is outcome
    assert merged.detail == "why"
    assert merged.at == 5.0
    assert merged.signals == {
        "latency_ms": 12.0,
        "lb_queue": 4.0,
        "lb_sessions": 20.0,
        "lb_rate": 7.0,
    }
    assert sample.signals == {"latency_ms": 12.0}


def test_merge_without_member_keeps_sample() -> None:
    """Without an LB member the sample is returned as it is."""
    sample = Sample(SERVER, 5.0, ProbeOutcome.OK, {"latency_ms": 12.0})
    assert merge(sample, None) is sample
