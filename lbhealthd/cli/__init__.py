"""The `lbhealthd` command. Exit codes: 0 success, 1 the check found a problem, 2 usage or
config error."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from lbhealthd import logs
from lbhealthd.cli.commands import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cmd_run
from lbhealthd.cli.parser import build_parser
from lbhealthd.errors import ConfigError, ControlError, ListenerError, MissingExtra, StateError
from lbhealthd.printable import printable

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "build_parser", "cmd_run", "main"]


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
    except MissingExtra as exc:  # one line naming the extra; nothing was started
        print(printable(str(exc)), file=sys.stderr)
        return EXIT_USAGE
    except (StateError, ControlError, ListenerError) as exc:
        print(printable(f"lbhealthd: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `lbhealthd status --json | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
