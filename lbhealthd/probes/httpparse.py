"""The HTTP/1.1 side of a health probe, without I/O: the request a URL asks for, and a reader
that turns a connection's bytes into one response at a time with httptools' C parser (llhttp).

Theory of operation: a connection sends ``Endpoint.request`` and feeds every byte it receives to
its ``ResponseReader``; ``feed`` returns a ``Response`` as soon as one is known, ``feed_eof``
when the server closes. A body is known either when it ends or as soon as it exceeds
``max_body``: then ``Response.body`` is None and the rest is never buffered (a declared
Content-Length above the cap is refused at the headers). The reader never decides what a
response means; the prober judges it.

Framing (what llhttp enforces, and what this module adds):
- Content-Length and chunked bodies end where their framing says; an EOF before that is a
  ``ServerDisconnectedError`` error (truncated), never a short body.
- A body with neither ends at EOF (HTTP/1.0 style); the connection is then not reused.
- 1xx interim answers (100 Continue, 103 Early Hints) are skipped; the final answer counts.
- An EOF before any byte of an answer is ``ServerDisconnectedError`` with ``idle=True``: the
  server closed a kept-alive connection the request was sent on; the request may be retried once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httptools

__all__ = [
    "Endpoint",
    "ParseError",
    "Response",
    "ResponseReader",
    "ServerDisconnectedError",
    "endpoint",
]

_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


class ParseError(httptools.HttpParserError):
    """The answer is not HTTP/1.x."""


class ServerDisconnectedError(Exception):
    """The server closed the connection before the answer was complete."""

    def __init__(self, message: str, *, idle: bool) -> None:
        super().__init__(message)
        self.idle = idle  # no byte of an answer had arrived: the request may be retried


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an http:// URL points and the request bytes that GET it."""

    host: str  # a name or an IP literal, IPv6 without brackets
    port: int
    request: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A final answer: status, Location header, body (None: larger than the cap), and whether
    the connection can carry the next request."""

    status: int
    location: str
    body: bytes | None
    keep_alive: bool


def endpoint(url: str, user_agent: str) -> Endpoint:
    """Build the GET request for an ``http://`` URL; raise ValueError for anything else.

    Like the aiohttp client: ``Host`` carries the port unless it is 80, IPv6 hosts are
    bracketed, user:password in the URL becomes Basic authorization, the fragment is not sent.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise ValueError(f"not an http:// URL: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    port = parts.port or 80
    shown = f"[{host}]" if ":" in host else host
    if port != 80:
        shown = f"{shown}:{port}"
    target = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_QUERY)
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {shown.encode('idna').decode('ascii')}",
        f"User-Agent: {user_agent}",
        "Accept: application/json",
        "Accept-Encoding: identity",
    ]
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(secret).decode('ascii')}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return Endpoint(host, port, request)


class ResponseReader:
    """Parses the answers arriving on one connection, one per ``start()``; bodies are capped."""

    __slots__ = (
        "_chunked",
        "_done",
        "_extra",
        "_headers_done",
        "_keep_alive",
        "_length",
        "_location",
        "_max_body",
        "_parser",
        "_parts",
        "_received",
        "_size",
        "_status",
        "_too_large",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        # httptools looks its callbacks up once, here: only the ones defined below are called.
        self._parser = httptools.HttpResponseParser(self)
        self.start()

    def start(self) -> None:
        """Expect a new answer (call before sending each request)."""
        self._received = False
        self._done = False
        self._extra = False
        self._keep_alive = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._headers_done = False
        self._status = 0
        self._too_large = False
        self._length = -1
        self._chunked = False
        self._location = ""
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def received(self) -> bool:
        """Whether any byte of the current answer has arrived."""
        return self._received

    # --- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> Response | None:
        """Parse ``data``; return the answer once it is complete or known to be too large.

        Raises ParseError for bytes that are not an HTTP/1.x answer.
        """
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._done = True  # 101 Switching Protocols: judged by its status, never reused
            return self._response(keep_alive=False)
        except httptools.HttpParserError as exc:
            if self._too_large:
                return self._response(keep_alive=False)
            # Junk right after a complete answer fails it too, as in aiohttp's client.
            raise ParseError(str(exc) or "malformed HTTP answer") from exc
        if self._too_large:
            return self._response(keep_alive=False)
        if self._done:
            return self._response(keep_alive=self._keep_alive and not self._extra)
        return None

    def feed_eof(self) -> Response:
        """The server closed: return the answer if EOF ends it, else raise the error."""
        if self._done or self._too_large:
            return self._response(keep_alive=False)
        if not self._received:
            raise ServerDisconnectedError(
                "server closed the connection without answering", idle=True
            )
        if not self._headers_done:
            raise ServerDisconnectedError(
                "server closed the connection in the middle of the headers", idle=False
            )
        if self._chunked:
            raise ServerDisconnectedError(
                "server closed the connection before the last chunk", idle=False
            )
        if self._length >= 0:
            raise ServerDisconnectedError(
                f"server closed the connection after {self._size} of {self._length} body bytes",
                idle=False,
            )
        self._done = True  # a body without length or chunks ends at EOF
        return self._response(keep_alive=False)

    def _response(self, *, keep_alive: bool) -> Response:
        body = None if self._too_large else b"".join(self._parts)
        status = self._status or self._parser.get_status_code()
        return Response(status, self._location, body, keep_alive and not self._too_large)

    # --- httptools callbacks ---------------------------------------------------------------

    # Once an answer is done, whatever follows it in the same read (a second answer, junk) is
    # ignored and the connection is not reused.

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done:
            self._extra = True
            return
        name = name.lower()
        if name == b"content-length":
            try:
                self._length = int(value)
            except ValueError:
                self._length = -1  # llhttp has already refused a malformed one
        elif name == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif name == b"location":
            self._location = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._done:
            return
        self._headers_done = True
        if self._length > self._max_body:
            self._too_large = True

    def on_body(self, body: bytes) -> None:
        if self._too_large or self._done:
            return
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large = True
            self._parts = []
            return
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._done:
            self._extra = True
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._reset_message()  # an interim answer: the final one follows
            return
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()
        self._done = True
