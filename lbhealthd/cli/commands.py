"""What each `lbhealthd` command does, given its parsed arguments; the exit codes they share."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from lbhealthd import logs
from lbhealthd.config import Config, load_config, resolve_path
from lbhealthd.config.lenient import Broken
from lbhealthd.errors import (
    CapRefused,
    ConfigError,
    ControlRefused,
    DaemonNotAnswering,
    DriverError,
    InvalidDuration,
    UnknownServer,
)
from lbhealthd.extras import require
from lbhealthd.oncall import commands as oncall
from lbhealthd.printable import printable

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_path(args.config))


def _load_reachable(args: argparse.Namespace) -> Config | Broken:
    """The config, or for a file that does not validate what can be read of it to reach the
    running daemon (which runs the config it accepted last)."""
    path = resolve_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        if not os.path.exists(path):
            raise  # no file at all is a wrong path, not a file broken on disk
        return Broken.of(exc, path).at(args.socket)
    if args.socket:
        daemon = config.daemon.model_copy(update={"control_socket": args.socket})
        config = config.model_copy(update={"daemon": daemon})
    return config


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

    with asyncio.Runner(loop_factory=_loop_factory(config.daemon.event_loop)) as runner:
        return runner.run(go())


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``daemon.event_loop`` names: uvloop's (the ``fast`` extra) when it says
    uvloop, or auto and uvloop is installed; else None, the standard loop."""
    from lbhealthd.probes.http_prober import loop_factory

    if choice == "uvloop":
        require("fast", "daemon.event_loop uvloop")
    return loop_factory() if choice in ("uvloop", "auto") else None


def _print(outcome: oncall.Outcome, as_json: bool = False, report: bool = False) -> int:
    """Print what a command did: on stdout when it succeeded or is a report (status, audit:
    their findings are the output), on stderr when it failed. Text carries what others wrote
    (reasons, names, HAProxy's messages), so its control characters are escaped; JSON escapes
    them itself."""
    for warning in outcome.warnings:
        print(printable(f"warning: {warning}"), file=sys.stderr)
    if as_json and outcome.document is not None:
        print(oncall.dumps(outcome.document))
    else:
        ok = outcome.code == 0 or (report and outcome.code == 1)
        stream = sys.stdout if ok else sys.stderr
        for line in outcome.lines:
            print(printable(line), file=stream)
    return outcome.code


def _on_call(coro: Any) -> oncall.Outcome:
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
    config = _load_reachable(args)
    return _print(
        _on_call(oncall.drain(config, args.server, args.reason, args.for_, args.force, args.maint))
    )


def cmd_restore(args: argparse.Namespace) -> int:
    """Put a server back in rotation and end its override."""
    config = _load_reachable(args)
    return _print(_on_call(oncall.restore(config, args.server, args.for_, args.reason or "")))


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate a config file, then have the running daemon reload it and say what changed."""
    from lbhealthd.oncall.reload import reload

    path = resolve_path(args.config)
    config = load_config(path)  # an invalid file stops here, exit 2, the daemon untouched
    return _print(_on_call(reload(config, os.path.abspath(path))))


WATCH_INTERVAL = 2.0  # seconds between two tables of `status --watch` by default
CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


def cmd_status(args: argparse.Namespace) -> int:
    """Show every server: LB state, what lbhealthd wants and why, load, overrides."""
    if args.interval is not None and not args.watch:
        print("lbhealthd status: --interval needs --watch", file=sys.stderr)
        return EXIT_USAGE
    if args.check and args.watch:
        print("lbhealthd status: --check and --watch do not go together", file=sys.stderr)
        return EXIT_USAGE
    config = _load_reachable(args)
    if args.watch:
        return _watch(config, args.json, args.interval or WATCH_INTERVAL)
    outcome = _on_call(oncall.show_status(config))
    code = _print(outcome, as_json=args.json, report=True)
    if not args.check or code == EXIT_USAGE or outcome.document is None:
        return code
    from lbhealthd.status import check_problems

    problems = check_problems(outcome.document)
    for problem in problems:
        print(printable(f"lbhealthd status --check: {problem}"), file=sys.stderr)
    return EXIT_PROBLEM if problems else EXIT_OK


def _watch(config: Config | Broken, as_json: bool, interval: float) -> int:
    """The status again and again until Ctrl-C: redrawn in place on a terminal, else one
    after the other with a blank line between (a pipe or a file keeps every one). Each is
    written at once, so that a reader never sees half of one, nor a half-drawn screen."""
    import time

    tty = sys.stdout.isatty()
    warned: set[str] = set()
    try:
        while True:
            outcome = _on_call(oncall.show_status(config))
            if outcome.code == EXIT_USAGE:  # refused (permissions): asking again changes nothing
                return _print(outcome)
            for warning in outcome.warnings:  # a config file broken on disk: said once
                if warning not in warned:
                    warned.add(warning)
                    print(printable(f"warning: {warning}"), file=sys.stderr, flush=True)
            if as_json and outcome.document is not None:
                body = oncall.dumps(outcome.document)
            else:
                body = "\n".join(printable(line) for line in outcome.lines)
            if tty:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                body = f"{CLEAR}every {interval:g}s, Ctrl-C to stop: {stamp}\n\n{body}"
            sys.stdout.write(body + "\n\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """Compare the live pool, or a candidate haproxy.cfg, with the expected pool."""
    from lbhealthd.oncall import audit as audit_cli

    config = _load(args)
    if args.accept or args.reason:  # audit --accept POOL [--reason TEXT]
        if not args.accept or args.haproxy_cfg or args.fix:
            print("lbhealthd audit: --reason needs --accept, which goes alone", file=sys.stderr)
            return EXIT_USAGE
        from lbhealthd.oncall.memory import accept

        why = args.reason or "(none given)"
        return _print(_on_call(accept(config, args.accept, why)), as_json=args.json)
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

    require("demo", "lbhealthd demo")
    from lbhealthd.demo import run_demo

    return run_demo(Path(args.out) if args.out else None, args.short, args.enforce)


def cmd_agent(args: argparse.Namespace) -> int:
    """Report this host's load on HTTP /health and, with --agent-port, to HAProxy."""
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
