"""Read the servers of an HAProxy configuration file the way HAProxy 2.6 resolves them.

``parse_backends`` reads the ``server`` lines of every ``backend`` and ``listen`` section:
    - ``weight`` defaults to 1; HAProxy reads it with ``atol`` (``12abc`` is 12, ``abc`` is 0)
      and refuses values outside 0..256.
    - ``default-server`` lines set defaults for the ``server`` lines that follow them in the
      same section. A proxy starts from the ``default-server`` settings of the last
      ``defaults`` section above it, or of the one it names with ``from NAME``; every
      ``defaults`` section starts afresh (or from the one it names with ``from``).
    - ``check``/``no-check`` and ``disabled``/``enabled`` set the flags; the later one wins.
    - lines end at LF and are split into words as HAProxy splits them (``config_words``);
      environment variables are not expanded.
    - ``server-template <prefix> <num | first-last> <fqdn>[:<port>] [params*]`` expands into
      one server per number, named ``<prefix><number>`` in decimal without leading zeros
      (``web 3`` gives web1..web3, ``web 5-7`` gives web5..web7, ``web 03-4`` gives web3 and
      web4), each with the address and the settings of the line and its line number. As HAProxy
      reads it: ``num`` is read like ``atoi`` (``3x`` is 3) and stands for 1-num; in a range
      each bound is read like ``atoi``; a first number below 1 or a last one below the first is
      refused. At most ``MAX_TEMPLATE_SERVERS`` servers per line.
A file HAProxy would refuse for its structure (a ``server`` line without an address, a proxy
defined twice, two servers of one proxy with one name, an unterminated quote) raises ValueError
naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lbhealthd.drivers.haproxy.config_words import LineError, split_words
from lbhealthd.monitors.audit import MAX_WEIGHT

DEFAULT_WEIGHT = 1
MAX_TEMPLATE_SERVERS = 65536

SECTIONS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "userlist",
        "peers",
        "resolvers",
        "mailers",
        "program",
        "http-errors",
        "ring",
        "cache",
        "fcgi-app",
        "log-forward",
        "crt-store",
        "traces",
    }
)
_PROXIES_WITH_SERVERS = frozenset({"backend", "listen"})

# Server keywords that take one argument, so that an argument is never read as a keyword
# (``cookie check`` names a cookie, it does not enable checks).
_ONE_ARG = frozenset(
    {
        "addr",
        "agent-addr",
        "agent-inter",
        "agent-port",
        "agent-send",
        "alpn",
        "ca-file",
        "check-alpn",
        "check-proto",
        "check-sni",
        "ciphers",
        "ciphersuites",
        "client-sigalgs",
        "cookie",
        "crl-file",
        "crt",
        "curves",
        "downinter",
        "error-limit",
        "fall",
        "fastinter",
        "hash-key",
        "id",
        "init-addr",
        "inter",
        "log-proto",
        "max-reuse",
        "maxconn",
        "maxqueue",
        "minconn",
        "namespace",
        "npn",
        "observe",
        "on-error",
        "on-marked-down",
        "on-marked-up",
        "pool-low-conn",
        "pool-max-conn",
        "pool-purge-delay",
        "port",
        "proto",
        "proxy-v2-options",
        "redir",
        "resolve-net",
        "resolve-opts",
        "resolve-prefer",
        "resolvers",
        "rise",
        "shard",
        "sigalgs",
        "slowstart",
        "sni",
        "socks4",
        "ssl-max-ver",
        "ssl-min-ver",
        "tcp-ut",
        "track",
        "verify",
        "verifyhost",
        "ws",
    }
)

_ATOL = re.compile(r"\s*([+-]?\d+)")


@dataclass(frozen=True, slots=True)
class CfgServer:
    """A ``server`` line of a backend, with the settings it ends up with."""

    name: str
    address: str  # as written: ``127.0.0.1:8080``, ``[::1]:80``, ``unix@/path`` ...
    weight: int
    check: bool
    disabled: bool
    line: int  # 1-based


@dataclass(slots=True)
class _ServerDefaults:
    weight: int = DEFAULT_WEIGHT
    check: bool = False
    disabled: bool = False

    def copy(self) -> _ServerDefaults:
        return _ServerDefaults(self.weight, self.check, self.disabled)


def _words(text: str, lineno: int) -> list[str]:
    try:
        return list(split_words(text).words)
    except LineError as exc:
        raise ValueError(f"line {lineno}: {exc}") from None


def _atol(value: str) -> int:
    match = _ATOL.match(value)
    return int(match.group(1)) if match else 0


def _apply(params: Sequence[str], into: _ServerDefaults, lineno: int) -> None:
    i = 0
    while i < len(params):
        word = params[i]
        if word == "weight":
            if i + 1 >= len(params):
                raise ValueError(f"line {lineno}: 'weight' expects an integer argument")
            weight = _atol(params[i + 1])
            if not 0 <= weight <= MAX_WEIGHT:
                raise ValueError(f"line {lineno}: weight {weight} is not within 0 and 256")
            into.weight = weight
            i += 1
        elif word in ("check", "no-check"):
            into.check = word == "check"
        elif word in ("disabled", "enabled"):
            into.disabled = word == "disabled"
        elif word in _ONE_ARG:
            i += 1
        i += 1


def template_numbers(arg: str, lineno: int) -> range:
    """The numbers a ``server-template`` ``<num | range>`` argument stands for."""
    first_arg, dash, last_arg = arg.partition("-")
    first, last = (_atol(first_arg), _atol(last_arg)) if dash else (1, _atol(arg))
    if first < 1 or last < first:
        raise ValueError(f"line {lineno}: wrong server-template number or range {arg!r}")
    if last - first + 1 > MAX_TEMPLATE_SERVERS:
        raise ValueError(
            f"line {lineno}: server-template {arg!r} makes more than {MAX_TEMPLATE_SERVERS} servers"
        )
    return range(first, last + 1)


def _server_lines(words: list[str], lineno: int) -> list[tuple[str, str, list[str]]]:
    """(name, address, params) for each server a ``server`` or ``server-template`` line
    defines."""
    if words[0] == "server":
        if len(words) < 3:
            raise ValueError(f"line {lineno}: 'server' expects <name> and <addr>[:<port>]")
        return [(words[1], words[2], words[3:])]
    if len(words) < 4:
        raise ValueError(
            f"line {lineno}: 'server-template' expects <prefix> <num | range> <addr>[:<port>]"
        )
    numbers = template_numbers(words[2], lineno)
    return [(f"{words[1]}{n}", words[3], words[4:]) for n in numbers]


def _proxy_name(words: list[str], lineno: int) -> tuple[str, str | None]:
    if len(words) < 2:
        raise ValueError(f"line {lineno}: '{words[0]}' expects a name")
    base = words[3] if len(words) >= 4 and words[2] == "from" else None
    return words[1], base


def parse_backends(text: str) -> dict[str, list[CfgServer]]:
    """The servers of every ``backend`` and ``listen`` section, by section name, in file
    order; see the module docstring for how defaults apply."""
    backends: dict[str, list[CfgServer]] = {}
    declared: dict[str, int] = {}
    named_defaults: dict[str, _ServerDefaults] = {}
    last_defaults = _ServerDefaults()
    section = ""
    servers: list[CfgServer] | None = None
    names: dict[str, int] = {}
    defsrv = _ServerDefaults()

    def defaults_named(name: str, lineno: int) -> _ServerDefaults:
        if name not in named_defaults:
            raise ValueError(f"line {lineno}: defaults section {name!r} not found above")
        return named_defaults[name].copy()

    for lineno, line in enumerate(text.split("\n"), start=1):
        words = _words(line, lineno)
        if not words:
            continue
        keyword = words[0]
        if keyword in SECTIONS:
            section, servers, names = keyword, None, {}
            if keyword == "defaults":
                name = words[1] if len(words) >= 2 and words[1] != "from" else None
                base = words[words.index("from") + 1] if "from" in words[1:-1] else None
                defsrv = defaults_named(base, lineno) if base else _ServerDefaults()
                last_defaults = defsrv
                if name is not None:
                    named_defaults[name] = defsrv
            elif keyword in _PROXIES_WITH_SERVERS:
                name, base = _proxy_name(words, lineno)
                if name in declared:
                    raise ValueError(
                        f"line {lineno}: {keyword} {name!r} is already defined at line "
                        f"{declared[name]}"
                    )
                declared[name] = lineno
                defsrv = defaults_named(base, lineno) if base else last_defaults.copy()
                servers = backends[name] = []
            continue
        if keyword == "default-server" and section in ("defaults", *_PROXIES_WITH_SERVERS):
            _apply(words[1:], defsrv, lineno)
        elif keyword in ("server", "server-template") and servers is not None:
            for name, address, params in _server_lines(words, lineno):
                if name in names:
                    raise ValueError(
                        f"line {lineno}: another server named {name!r} in {section} "
                        f"(line {names[name]})"
                    )
                names[name] = lineno
                settings = defsrv.copy()
                _apply(params, settings, lineno)
                servers.append(
                    CfgServer(
                        name, address, settings.weight, settings.check, settings.disabled, lineno
                    )
                )
    return backends
