"""The `lbhealthd` command line: its subcommands, their options, and the checks on option values
(a bad value is a usage error naming the option, before any command runs)."""

from __future__ import annotations

import argparse
import re

from lbhealthd import __version__
from lbhealthd.cli import habits, memory
from lbhealthd.cli.commands import (
    cmd_agent,
    cmd_audit,
    cmd_check_config,
    cmd_demo,
    cmd_drain,
    cmd_reload,
    cmd_restore,
    cmd_run,
    cmd_status,
)
from lbhealthd.config import parse_duration
from lbhealthd.errors import (
    InvalidName,
)
from lbhealthd.model import ServerId


def _server(text: str) -> ServerId:
    try:
        return ServerId.parse(text)
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    from lbhealthd.overrides import MAX_FOR, MAX_FOR_TEXT

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds > MAX_FOR:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_FOR_TEXT} (got {text}); leave --for out for an override that lasts "
            "until restored"
        )
    return seconds


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1h (got {text})")
    return seconds


def _listen(text: str) -> str:
    from lbhealthd.agent import parse_listen

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 1-65535")
    return int(text)


_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


def _window(text: str) -> float:
    from lbhealthd.agent import check_window

    try:
        return check_window(parse_duration(float(text) if _NUMBER.fullmatch(text) else text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid window {text!r}: {exc}") from None


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: $LBHEALTHD_CONFIG, else /etc/lbhealthd/config.yaml)",
    )


def _add_socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the running daemon's control socket (default: daemon.control_socket of the config, "
        "read even from a file that does not validate)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbhealthd",
        description="Keep a load-balanced API up: drain overloaded servers with hysteresis and "
        "safety caps, restore them when they recover, and say why.",
    )
    parser.add_argument("--version", action="version", version=f"lbhealthd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check-config", help="validate a config file (exit 2 if invalid)")
    _add_config(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("run", help="run the daemon (SIGHUP reloads the config)")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    p.add_argument("--log-format", choices=["json", "console"], help="override daemon.log_format")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("drain", help="take POOL/SERVER out of rotation (a manual override)")
    p.add_argument("server", type=_server, metavar="POOL/SERVER")
    _add_config(p)
    _add_socket(p)
    p.add_argument(
        "--reason",
        required=True,
        help="why (recorded, and shown in status to every local user: no secrets)",
    )
    p.add_argument(
        "--for",
        dest="for_",
        type=_duration,
        metavar="DURATION",
        help="expire after this long (500ms, 30m, 2h; at most 365d); the daemon then takes over",
    )
    p.add_argument(
        "--force", action="store_true", help="drain even beyond max_drained / min_in_service"
    )
    p.add_argument("--maint", action="store_true", help="maintenance instead of drain")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("restore", help="put POOL/SERVER back in rotation, ending its override")
    p.add_argument("server", type=_server, metavar="POOL/SERVER")
    _add_config(p)
    _add_socket(p)
    p.add_argument(
        "--for",
        dest="for_",
        type=_duration,
        metavar="DURATION",
        help="keep it in for this long if lbhealthd had drained it, at most 365d "
        "(default: daemon.manual_change_hold)",
    )
    p.add_argument(
        "--reason",
        help="why (optional; recorded, and shown in status to every local user: no secrets)",
    )
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "audit",
        help="compare the live LB (or --haproxy-cfg FILE) with the "
        "expected pool; exit 0 clean, 1 drift, 2 could not check",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--haproxy-cfg",
        metavar="FILE",
        help="check a candidate HAProxy config file instead of the live LB",
    )
    p.add_argument("--fix", action="store_true", help="set weights back to expected_weights")
    p.add_argument("--yes", action="store_true", help="do not ask before --fix changes")
    memory.add_accept(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("status", help="show the pools, servers, decisions and overrides")
    _add_config(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true", help="stable JSON instead of a table")
    p.add_argument(
        "--watch", action="store_true", help="show it again every --interval until Ctrl-C"
    )
    p.add_argument(
        "--interval",
        type=_interval,
        metavar="DURATION",
        help="time between two tables with --watch (500ms, 2s, 1m; default: 2s)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the daemon is not running or anything is alerting (a refused "
        "reload, a pool blind, unreadable, inconsistent, below min_in_service, any ALERT line)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "reload",
        help="validate FILE, then have the running daemon reload it and say what changed "
        "(exit 0 reloaded, 1 refused or no daemon, 2 invalid file)",
    )
    _add_config(p)
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser(
        "agent", help="report this host's load: HTTP /health and HAProxy's agent-check"
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default="127.0.0.1:9111",
        metavar="HOST:PORT",
        help="address of the HTTP /health endpoint (default: %(default)s)",
    )
    p.add_argument(
        "--agent-port",
        type=_port,
        metavar="PORT",
        help="answer HAProxy's agent-check on this TCP port (default: off)",
    )
    p.add_argument(
        "--agent-bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="agent-check bind address; HAProxy must be able to reach it (default: %(default)s)",
    )
    p.add_argument(
        "--full-below",
        type=float,
        default=0.5,
        metavar="CPU",
        help="full weight (ready 100%%) up to this CPU share (default: %(default)s)",
    )
    p.add_argument(
        "--drain-at",
        type=float,
        default=0.95,
        metavar="CPU",
        help="CPU share from which the weight stays at --min-weight; the agent never replies "
        "drain: the daemon, with its caps, decides drains (default: %(default)s)",
    )
    p.add_argument(
        "--min-weight",
        type=int,
        default=10,
        metavar="PERCENT",
        help="weight at and above --drain-at, in percent (default: %(default)s)",
    )
    p.add_argument(
        "--cgroup-root",
        default="/sys/fs/cgroup",
        metavar="DIR",
        help="cgroup v2 directory whose limits apply (default: %(default)s)",
    )
    p.add_argument(
        "--window",
        type=_window,
        default=5.0,
        metavar="DURATION",
        help="report cpu (on /health and to the agent-check) as the mean of the once-a-second "
        "samples of this window, so one busy second is not overload; 0 reports the latest "
        "sample (e.g. 10s, 500ms; at most 10m; default: 5s)",
    )
    p.add_argument("--log-format", choices=["json", "console"], help="default: json unless a tty")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("demo", help="replay the outage (weights 100,100,1,1,1) on 127.0.0.1")
    p.add_argument("--short", action="store_true", help="a ~16 s run (used by CI)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: a new temporary one)")
    p.add_argument(
        "--enforce",
        action="store_true",
        help="run the daemon with enforce_weights on: it sets the weights back itself",
    )
    p.set_defaults(func=cmd_demo)

    memory.add_commands(sub, _server, _add_config)
    habits.add_commands(parser, sub)
    return parser
