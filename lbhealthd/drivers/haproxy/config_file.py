"""Check a candidate HAProxy configuration file without touching any running load balancer.

``syntax_check`` runs ``haproxy -c`` (HAProxy's own parser; it binds nothing) and returns
whether HAProxy accepts the file, with its ALERT and WARNING lines. It never runs code from the
file: ``read_candidate`` reads it once (a regular file, at most ``MAX_CANDIDATE`` bytes; never a
FIFO or device that would block or never end), ``config_guard`` refuses what HAProxy would run
while parsing (``UnsafeConfig``), and HAProxy checks a private copy of exactly the bytes that
were judged, so a file swapped in the meantime is not what HAProxy reads. In the copy, a
``default-path config`` or ``parent`` line points at the original file's directory, so relative
paths resolve as they would for the original.

``parse_backends`` (``lbhealthd.drivers.haproxy.config_parser``) reads the ``server`` and
``server-template`` lines of every ``backend`` and ``listen`` section the way HAProxy 2.6
resolves them.

``audit_cfg`` compares the parsed backends with an :class:`~lbhealthd.monitors.audit.Expectation`
and returns the same findings as the live audit, each naming the file and line.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import string
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from lbhealthd.drivers.haproxy.config_guard import refusals
from lbhealthd.drivers.haproxy.config_parser import (
    DEFAULT_WEIGHT,
    SECTIONS,
    CfgServer,
    parse_backends,
)
from lbhealthd.drivers.haproxy.config_words import LineError, split_words
from lbhealthd.drivers.haproxy.process import find_haproxy
from lbhealthd.errors import UnsafeConfig
from lbhealthd.monitors.audit import Expectation, Finding, FindingKind, sort_findings

__all__ = [
    "CHECK_TIMEOUT",
    "DEFAULT_WEIGHT",
    "MAX_CANDIDATE",
    "SECTIONS",
    "CfgServer",
    "audit_cfg",
    "check_candidate",
    "haproxy_messages",
    "parse_backends",
    "read_candidate",
    "syntax_check",
]

CHECK_TIMEOUT = 30.0
MAX_CANDIDATE = 16 * 1024 * 1024  # far above any real haproxy.cfg
_LOG_LINE = re.compile(r"^\[(ALERT|WARNING|NOTICE|DEBUG)\]\s*(?:\(\d+\)\s*)?:\s?(.*)$")
_SAFE_PATH_BYTES = frozenset((string.ascii_letters + string.digits + "/._-+,:@=").encode())


def read_candidate(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a candidate file. OSError when it cannot be read, is not a regular file
    (opened without blocking, so a FIFO cannot hang the check) or is over MAX_CANDIDATE."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = f.read(MAX_CANDIDATE + 1)
    if len(data) > MAX_CANDIDATE:
        raise OSError(errno.EFBIG, f"larger than {MAX_CANDIDATE} bytes")
    return data


def _haproxy(binary: str | None) -> str:
    exe = binary if binary is not None else find_haproxy()
    if exe is None:
        raise FileNotFoundError(
            "haproxy binary not found (looked in PATH and /usr/sbin): install the haproxy "
            "package or pass its path"
        )
    return exe


def _haproxy_word(path: str) -> bytes:
    """``path`` as one HAProxy configuration word, whatever bytes it holds."""
    return b"".join(
        bytes([b]) if b in _SAFE_PATH_BYTES else b"\\x%02x" % b for b in os.fsencode(path)
    )


def _anchor_default_path(data: bytes, original: Path) -> bytes:
    """``data`` with each ``default-path config|parent`` line made ``default-path origin DIR``,
    DIR being what it means for ``original``, so that the copy resolves paths the same way."""
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        try:
            words = split_words(raw.decode("latin-1")).words
        except LineError:
            continue
        if words[:1] == ("default-path",) and words[1:2] in (("config",), ("parent",)):
            base = original.parent if words[1] == "config" else original.parent.parent
            lines[i] = b"default-path origin " + _haproxy_word(str(base))
    return b"\n".join(lines)


def check_candidate(
    data: bytes,
    path: str | os.PathLike[str],
    binary: str | None = None,
    *,
    timeout: float = CHECK_TIMEOUT,
) -> tuple[bool, str]:
    """``haproxy -c`` on ``data``, the content read from ``path``: whether HAProxy accepts it,
    and its messages, which name ``path``.

    UnsafeConfig, before HAProxy is started, when the file would run code as it is parsed.
    FileNotFoundError when haproxy is not installed.
    """
    exe = _haproxy(binary)
    refused = refusals(data)
    if refused:
        raise UnsafeConfig(os.fspath(path), refused)
    original = Path(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix="lbhealthd-cfg-") as workdir:
        copy = Path(workdir) / (original.name or "haproxy.cfg")
        copy.write_bytes(_anchor_default_path(data, original))
        try:
            done = subprocess.run(
                [exe, "-c", "-f", str(copy)],
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False, f"haproxy -c did not finish within {timeout:g}s"
    text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    return done.returncode == 0, haproxy_messages(text.replace(str(copy), os.fspath(path)))


def syntax_check(
    path: str | os.PathLike[str], binary: str | None = None, *, timeout: float = CHECK_TIMEOUT
) -> tuple[bool, str]:
    """``haproxy -c`` on the file at ``path``: whether HAProxy accepts it, and its messages.

    The messages are HAProxy's ALERT and WARNING lines (without NOTICE lines and process ids),
    or its closing verdict when there are none; a file that cannot be read fails the check with
    the reason. UnsafeConfig when the file would run code as it is parsed (HAProxy is then not
    started); FileNotFoundError when haproxy is not installed.
    """
    exe = _haproxy(binary)
    try:
        data = read_candidate(path)
    except OSError as exc:
        return False, f"cannot read {os.fspath(path)}: {exc.strerror or exc}"
    return check_candidate(data, path, exe, timeout=timeout)


def haproxy_messages(output: str) -> str:
    """HAProxy's ALERT/WARNING lines, one per message (``| ...`` continuations joined), or
    else its other non-NOTICE lines (``Configuration file is valid``)."""
    kept: list[str] = []
    other: list[str] = []
    last_kept = False
    for raw in output.split("\n"):  # HAProxy ends its lines with LF only
        line = raw.strip()
        if not line:
            continue
        match = _LOG_LINE.match(line)
        if match:
            level, text = match.groups()
            last_kept = level in ("ALERT", "WARNING")
            if last_kept:
                kept.append(f"[{level}] {text.strip()}")
        elif line.startswith("|"):
            if last_kept:
                kept[-1] += " " + line[1:].strip()
        else:
            last_kept = False
            other.append(line)
    return "\n".join(kept or other)


def audit_cfg(
    backends: Mapping[str, Sequence[CfgServer]],
    expectation: Expectation,
    *,
    require_checks: bool = False,
    source: str = "haproxy.cfg",
) -> list[Finding]:
    """Compare a parsed configuration with the expected pool: servers present, weights,
    servers starting ``disabled`` and, with ``require_checks``, servers without ``check``.

    ``source`` names the file in the messages.
    """
    pool = expectation.pool
    if pool not in backends:
        return [
            Finding(
                pool,
                None,
                FindingKind.MISSING_SERVER,
                f"backend {pool}",
                "absent",
                f"backend {pool} not found in {source}",
            )
        ]
    servers = {s.name: s for s in backends[pool]}
    findings: list[Finding] = []
    if expectation.servers is not None:
        for name in expectation.servers - servers.keys():
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.MISSING_SERVER,
                    "present",
                    "absent",
                    f"{pool}/{name}: not in backend {pool} of {source}, expected present",
                )
            )
    for name, server in servers.items():
        where = f"in {source} line {server.line}"
        sid = f"{pool}/{name}"
        if expectation.servers is not None and name not in expectation.servers:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.UNEXPECTED_SERVER,
                    "absent",
                    "present",
                    f"{sid}: {where}, not expected",
                )
            )
        expected = expectation.weight_of(name)
        if expected is not None and server.weight != expected:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.WEIGHT,
                    str(expected),
                    str(server.weight),
                    f"{sid}: weight {server.weight} {where}, expected {expected}",
                )
            )
        if server.disabled:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.ADMIN_STATE,
                    "ready",
                    "maint",
                    f"{sid}: disabled {where} (starts in maint), expected ready",
                )
            )
        if require_checks and not server.check:
            findings.append(
                Finding(
                    pool,
                    name,
                    FindingKind.CHECKS_DISABLED,
                    "on",
                    "off",
                    f"{sid}: no 'check' {where}, expected health checks on",
                )
            )
    return sort_findings(findings)
