"""The `lbhealthd` command. Exit codes: 0 success, 1 the check found a problem, 2 usage or
config error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lbhealthd import __version__
from lbhealthd.config import Config, load_config, resolve_path
from lbhealthd.errors import ConfigError, StateError

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
    from lbhealthd.daemon import Daemon

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(
            f"{exc.source}: config refused ({len(exc.problems)} problem(s)); nothing was loaded",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except StateError as exc:
        print(f"lbhealthd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
