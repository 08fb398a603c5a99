"""Check a candidate HAProxy configuration file without touching any running load balancer.

``syntax_check`` runs ``haproxy -c -f PATH`` (HAProxy's own parser; it binds nothing) and
returns whether HAProxy accepts the file, with its ALERT and WARNING lines.

``parse_backends`` (``lbhealthd.drivers.haproxy.config_parser``) reads the ``server`` lines of
every ``backend`` and ``listen`` section the way HAProxy 2.6 resolves them.

``audit_cfg`` compares the parsed backends with an :class:`~lbhealthd.monitors.audit.Expectation`
and returns the same findings as the live audit, each naming the file and line.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence

from lbhealthd.drivers.haproxy.config_parser import (
    DEFAULT_WEIGHT,
    SECTIONS,
    CfgServer,
    parse_backends,
)
from lbhealthd.drivers.haproxy.process import find_haproxy
from lbhealthd.monitors.audit import Expectation, Finding, FindingKind, sort_findings

__all__ = [
    "CHECK_TIMEOUT",
    "DEFAULT_WEIGHT",
    "SECTIONS",
    "CfgServer",
    "audit_cfg",
    "haproxy_messages",
    "parse_backends",
    "syntax_check",
]

CHECK_TIMEOUT = 30.0
_LOG_LINE = re.compile(r"^\[(ALERT|WARNING|NOTICE|DEBUG)\]\s*(?:\(\d+\)\s*)?:\s?(.*)$")


def syntax_check(
    path: str | os.PathLike[str], binary: str | None = None, *, timeout: float = CHECK_TIMEOUT
) -> tuple[bool, str]:
    """Run ``haproxy -c -f PATH``: whether HAProxy accepts the file, and its messages.

    The messages are HAProxy's ALERT and WARNING lines (without NOTICE lines and process ids),
    or its closing verdict when there are none. FileNotFoundError when haproxy is not installed.
    """
    exe = binary if binary is not None else find_haproxy()
    if exe is None:
        raise FileNotFoundError(
            "haproxy binary not found (looked in PATH and /usr/sbin): install the haproxy "
            "package or pass its path"
        )
    args = [exe, "-c", "-f", os.fspath(path)]
    try:
        done = subprocess.run(
            args, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return False, f"haproxy -c did not finish within {timeout:g}s"
    text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    return done.returncode == 0, haproxy_messages(text)


def haproxy_messages(output: str) -> str:
    """HAProxy's ALERT/WARNING lines, one per message (``| ...`` continuations joined), or
    else its other non-NOTICE lines (``Configuration file is valid``)."""
    kept: list[str] = []
    other: list[str] = []
    last_kept = False
    for raw in output.splitlines():
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
