"""HTTP health probes over one shared keep-alive session, bounded in time and in bytes.

A probe is one GET of a server's health URL. Whatever the server does (refuses, stalls, redirects,
answers 503, sends an endless or hostile body) becomes a Sample; only cancellation propagates.

- The whole probe (connect, headers, body) runs under one deadline: a server trickling bytes
  cannot stretch it.
- At most ``max_body + 1`` bytes of a body are read; a larger body is refused, never buffered.
- Redirects are not followed: a health URL that moved is a misconfiguration to see, not to chase.
- With ``load_fields`` the body must be a JSON object whose fields are finite, non-negative
  numbers; a field that is simply absent leaves its signal out and is named in ``detail``.
- A JSON body saying ``"status": "fail"`` (or ``error``, ``down``) fails the probe even under a 200.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp

from lbhealthd.model import ProbeOutcome, Sample, ServerId

PLACEHOLDERS = ("name", "address", "port")
FAILED_STATUSES = frozenset({"fail", "error", "down"})
MAX_SIGNAL = 1e12
MAX_DETAIL = 300

_FORMATTER = string.Formatter()
_MISSING = object()


class _BadBody(Exception):
    """The body cannot be used; the message is the Sample's detail."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """What came back: the status, where a redirect pointed, and the body (None: too large)."""

    status: int
    location: str
    body: bytes | None


class HttpProber:
    """Probes health URLs over one aiohttp session; ``close()`` releases its connections."""

    def __init__(
        self,
        *,
        max_body: int = 65536,
        user_agent: str = "lbhealthd/0.1",
        max_connections: int = 4096,
        per_host: int = 2,
    ) -> None:
        self._max_body = max_body
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        self._max_connections = max_connections
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> HttpProber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session and its keep-alive connections; later probes are refused."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(
        self,
        server: ServerId,
        url: str,
        timeout: float,  # noqa: ASYNC109 - each pool has its own; it bounds the whole probe
        load_fields: Mapping[str, str],
        now: Callable[[], float],
    ) -> Sample:
        """GET ``url`` within ``timeout`` seconds and judge the answer; never raises for a server.

        ``load_fields`` maps signal names to JSON fields (dotted paths reach nested objects);
        ``now`` is a monotonic clock in seconds, read at the start (``Sample.at``) and at the end.
        """
        session = self._open_session()
        started = now()
        try:
            async with asyncio.timeout(timeout):
                answer = await self._fetch(session, url)
        except TimeoutError:
            return failed(server, started, ProbeOutcome.TIMEOUT, f"no answer within {timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            outcome = ProbeOutcome.REFUSED if _refused(exc) else ProbeOutcome.ERROR
            return failed(server, started, outcome, describe(exc))
        except Exception as exc:
            return failed(server, started, ProbeOutcome.ERROR, describe(exc))
        latency_ms = (now() - started) * 1000.0
        return to_sample(
            server,
            started,
            latency_ms,
            (answer.status, answer.location, answer.body),
            load_fields,
            self._max_body,
        )

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("HttpProber is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._per_host
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
            )
        return self._session

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> _Answer:
        response = await session.get(url, allow_redirects=False)
        try:
            body = await self._read_body(response)
        except BaseException:
            response.close()
            raise
        if body is None:
            response.close()  # the rest of the body is unread: the connection cannot be reused
        else:
            response.release()
        return _Answer(response.status, response.headers.get("Location", ""), body)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes | None:
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            return None
        body = bytearray()
        while len(body) <= self._max_body:
            chunk = await response.content.read(self._max_body + 1 - len(body))
            if not chunk:
                return bytes(body)
            body += chunk
        return None


def to_sample(
    server: ServerId,
    started: float,
    latency_ms: float,
    answer: tuple[int, str, bytes | None],
    load_fields: Mapping[str, str],
    max_body: int,
) -> Sample:
    """Turn an answer ``(status, Location header, body or None if larger than max_body)`` into
    a Sample: the status, then the body's size, then its JSON status and load fields."""
    status, location, body = answer
    signals = {"latency_ms": latency_ms}
    if not 200 <= status < 300:
        detail = _status_detail(status, location)
        return Sample(server, started, ProbeOutcome.HTTP_STATUS, signals, detail)
    if body is None:
        detail = f"body larger than {max_body} bytes"
        return Sample(server, started, ProbeOutcome.BAD_BODY, signals, detail)
    try:
        loads, missing = _read_signals(body, load_fields)
    except _BadBody as exc:
        return Sample(server, started, ProbeOutcome.BAD_BODY, signals, _clip(str(exc)))
    detail = f"missing load fields: {', '.join(missing)}" if missing else ""
    return Sample(server, started, ProbeOutcome.OK, {**signals, **loads}, _clip(detail))


def _read_signals(
    body: bytes, load_fields: Mapping[str, str]
) -> tuple[dict[str, float], list[str]]:
    """Return the load signals found in a health body and the JSON fields it lacks.

    Raises _BadBody when the body cannot be trusted: not JSON where JSON is needed, a failure
    status, or a field whose value is not a finite number between 0 and MAX_SIGNAL.
    """
    document = _parse(body, required=bool(load_fields))
    if document is None:
        return {}, []
    _check_status(document)
    signals: dict[str, float] = {}
    missing: list[str] = []
    for signal, path in load_fields.items():
        value = _lookup(document, path)
        if value is _MISSING:
            missing.append(path)
        else:
            signals[signal] = _number(signal, path, value)
    return signals, missing


def _parse(body: bytes, *, required: bool) -> dict[str, object] | None:
    if not required and not body.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        if not required:
            return None
        raise _BadBody(f"body is not valid UTF-8 (byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:
        if not required:
            return None
        raise _BadBody(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        if not required:
            return None
        raise _BadBody(f"body is {_kind(document)}, not a JSON object")
    return document


def _check_status(document: Mapping[str, object]) -> None:
    status = document.get("status")
    if isinstance(status, str) and status.strip().lower() in FAILED_STATUSES:
        raise _BadBody(f"health body reports status={status[:40]!r}")


def _lookup(document: Mapping[str, object], path: str) -> object:
    if path in document:
        return document[path]
    node: object = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _number(signal: str, path: str, value: object) -> float:
    field = f"field {path!r}" if signal == path else f"field {path!r} (signal {signal})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadBody(f"{field} is {_kind(value)}, not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _BadBody(f"{field} is {value}, not a finite number")
    if value < 0:
        raise _BadBody(f"{field} is negative ({value})")
    if value > MAX_SIGNAL:
        raise _BadBody(f"{field} is too large (above {MAX_SIGNAL:g})")
    return float(value)


def _kind(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
        case int() | float():
            return "a number"
        case _:
            return type(value).__name__


def _status_detail(status: int, location: str) -> str:
    if 300 <= status < 400:
        target = f" to {location[:200]!r}" if location else ""
        return f"HTTP {status}: redirect{target} not followed"
    return f"HTTP {status}"


def failed(server: ServerId, started: float, outcome: ProbeOutcome, detail: str) -> Sample:
    """A failed probe's Sample: no signals, ``detail`` clipped to MAX_DETAIL characters."""
    return Sample(server, started, outcome, {}, _clip(detail))


def _refused(exc: aiohttp.ClientConnectorError) -> bool:
    os_error = exc.os_error
    return isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED


def describe(exc: BaseException) -> str:
    """One line naming an exception and its message, for a Sample's detail."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def render_url(template: str, *, name: str, address: str, port: int) -> str:
    """Fill ``{name}``, ``{address}`` and ``{port}`` in a URL template.

    An IPv6 address is bracketed so it can stand in a URL's host; any other placeholder
    (or a format spec, a conversion, an unbalanced brace) raises ValueError.
    """
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    values = {"name": name, "address": host, "port": str(port)}
    parts: list[str] = []
    for literal, field, spec, conversion in _fields(template):
        parts.append(literal)
        if field is None:
            continue
        if field not in values or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"unknown placeholder {{{shown}}} in URL template {template!r};"
                " use {name}, {address} or {port}"
            )
        parts.append(values[field])
    return "".join(parts)


def _fields(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"URL template {template!r}: {exc}") from exc


def validate_url_template(template: str) -> None:
    """Raise ValueError unless ``template`` renders to an http(s) URL with a host."""
    url = render_url(template, name="server", address="192.0.2.1", port=80)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL template {template!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"URL template {template!r} has no host")
    _ = parts.port  # raises ValueError for a port that is not a number in range
