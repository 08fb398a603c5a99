"""`lbhealthd forget POOL/SERVER` and `lbhealthd audit --accept POOL`: the command line of
lbhealthd.oncall.memory."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lbhealthd.cli.commands import _load, _on_call, _print
from lbhealthd.model import ServerId

REASON_HELP = "why (recorded with who asked in the action log)"


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    server: Callable[[str], ServerId],
    add_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The `forget` subcommand."""
    p = sub.add_parser(
        "forget",
        help="forget POOL/SERVER, gone from the LB: its override, ownership, engine memory "
        "and place in the recorded server set",
    )
    p.add_argument("server", type=server, metavar="POOL/SERVER")
    add_config(p)
    p.add_argument("--reason", required=True, help=REASON_HELP)
    p.add_argument(
        "--force", action="store_true", help="forget it even though the LB still lists it"
    )
    p.set_defaults(func=cmd_forget)


def add_accept(p: argparse.ArgumentParser) -> None:
    """`audit --accept POOL [--reason TEXT]`."""
    p.add_argument(
        "--accept",
        metavar="POOL",
        help="record the servers the LB lists in POOL now as the set the audit expects",
    )
    p.add_argument("--reason", help=REASON_HELP + " (with --accept)")


def cmd_forget(args: argparse.Namespace) -> int:
    """Forget what lbhealthd remembers of a server gone from the LB."""
    from lbhealthd.oncall import memory

    config = _load(args)
    return _print(_on_call(memory.forget(config, args.server, args.reason, args.force)))
