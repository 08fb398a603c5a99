"""The `lbhealthd` command. Exit codes: 0 success, 1 the check found a problem, 2 usage or
config error."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lbhealthd import __version__, logs
from lbhealthd.config import Config, load_config, parse_duration, resolve_path
from lbhealthd.errors import (
    CapRefused,
    ConfigError,
    ControlError,
    ControlRefused,
    DaemonNotAnswering,
    DriverError,
    InvalidDuration,
    InvalidName,
    ListenerError,
    StateError,
    UnknownServer,
)
from lbhealthd.model import ServerId
from lbhealthd.oncall import commands as oncall
from lbhealthd.printable import printable

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file and say what it configures."""
    config = _load(args)
    pools = ", ".join(
        f"{p.name} (fall {p.fall}, rise {p.rise}, max_drained {p.max_drained:.0%}, "
        f"signals {', '.join(sorted(p.overload))})"
        for p in config.pools
    )
    print(f"{resolve_path(args.config)}: OK: {config.load_balancer.type}; pools: {pools}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    import asyncio

    from lbhealthd import logs
    from lbhealthd.daemon.loop import Daemon

    path = resolve_path(args.config)
    config = load_config(path)
    if args.dry_run:
        config = config.model_copy(
            update={"daemon": config.daemon.model_copy(update={"dry_run": True})}
        )
    logs.configure(args.log_format or config.daemon.log_format)

    async def go() -> int:
        daemon = Daemon(config, path)
        daemon.install_signals()
        return await daemon.run()

    return asyncio.run(go())


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


def _print(outcome: oncall.Outcome, as_json: bool = False, report: bool = False) -> int:
    """Print what a command did: on stdout when it succeeded or is a report (status, audit:
    their findings are the output), on stderr when it failed. Text carries what others wrote
    (reasons, names, HAProxy's messages), so its control characters are escaped; JSON escapes
    them itself."""
    if as_json and outcome.document is not None:
        print(oncall.dumps(outcome.document))
    else:
        ok = outcome.code == 0 or (report and outcome.code == 1)
        stream = sys.stdout if ok else sys.stderr
        for line in outcome.lines:
            print(printable(line), file=stream)
    return outcome.code


def _on_call(coro: Any) -> oncall.Outcome:
    import asyncio

    try:
        result: oncall.Outcome = asyncio.run(coro)
    except (UnknownServer, ControlRefused, InvalidDuration) as exc:
        return oncall.Outcome(EXIT_USAGE, (str(exc),))
    except (CapRefused, DaemonNotAnswering) as exc:
        return oncall.Outcome(EXIT_PROBLEM, (str(exc),))
    except DriverError as exc:
        return oncall.Outcome(EXIT_PROBLEM, (f"load balancer: {exc}",))
    return result


def cmd_drain(args: argparse.Namespace) -> int:
    """Take a server out of rotation with a reason, optionally for a while."""
    config = _load(args)
    return _print(
        _on_call(oncall.drain(config, args.server, args.reason, args.for_, args.force, args.maint))
    )


def cmd_restore(args: argparse.Namespace) -> int:
    """Put a server back in rotation and end its override."""
    config = _load(args)
    return _print(_on_call(oncall.restore(config, args.server, args.for_)))


def cmd_status(args: argparse.Namespace) -> int:
    """Show every server: LB state, what lbhealthd wants and why, load, overrides."""
    config = _load(args)
    return _print(_on_call(oncall.show_status(config)), as_json=args.json, report=True)


def cmd_audit(args: argparse.Namespace) -> int:
    """Compare the live pool, or a candidate haproxy.cfg, with the expected pool."""
    from lbhealthd.oncall import audit as audit_cli

    config = _load(args)
    if args.haproxy_cfg:
        return _print(audit_cli.candidate(config, args.haproxy_cfg), as_json=args.json, report=True)

    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            print("--fix needs --yes when not run from a terminal", file=sys.stderr)
            return False
        return input(question).strip().lower() in ("y", "yes")

    outcome = _on_call(audit_cli.live(config, fix=args.fix, yes=args.yes, confirm=confirm))
    return _print(outcome, as_json=args.json, report=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the postmortem's outage on 127.0.0.1 with lbhealthd running."""
    from pathlib import Path

    from lbhealthd.demo import run_demo

    return run_demo(Path(args.out) if args.out else None, args.short, args.enforce)


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


def cmd_agent(args: argparse.Namespace) -> int:
    """Report this host's load on HTTP /health and, with --agent-port, to HAProxy."""
    import asyncio

    from lbhealthd import logs
    from lbhealthd.agent import Thresholds, run_agent

    try:
        thresholds = Thresholds(args.full_below, args.drain_at, args.min_weight)
    except ValueError as exc:
        print(f"lbhealthd agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.log_format or ("console" if sys.stderr.isatty() else "json"))
    return asyncio.run(
        run_agent(
            args.listen,
            args.agent_port,
            thresholds,
            agent_host=args.agent_bind,
            cgroup_root=args.cgroup_root,
            window=args.window,
        )
    )


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: $LBHEALTHD_CONFIG)",
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
    p.add_argument(
        "--for",
        dest="for_",
        type=_duration,
        metavar="DURATION",
        help="keep it in for this long if lbhealthd had drained it, at most 365d "
        "(default: daemon.manual_change_hold)",
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
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("status", help="show the pools, servers, decisions and overrides")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="stable JSON instead of a table")
    p.set_defaults(func=cmd_status)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    func: Callable[[argparse.Namespace], int] = args.func
    # Commands that print a result keep stdout for it (JSON included): their log events, such
    # as a failed LB command, go to stderr. `run` and `agent` configure their own logging.
    logs.configure("console" if sys.stderr.isatty() else "json", level=logging.WARNING)
    try:
        return func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(printable(f"{exc.source}: {problem}"), file=sys.stderr)
        print(
            printable(
                f"{exc.source}: config refused ({len(exc.problems)} problem(s)); nothing was loaded"
            ),
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (StateError, ControlError, ListenerError) as exc:
        print(printable(f"lbhealthd: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `lbhealthd status --json | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
