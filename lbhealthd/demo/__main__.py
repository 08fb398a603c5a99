"""`python -m lbhealthd.demo [--short] [--out DIR]`: the same as `lbhealthd demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lbhealthd.demo.scenario import run_demo
from lbhealthd.errors import MissingExtra
from lbhealthd.extras import require


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lbhealthd demo",
        description="Replay the outage (weights 100,100,1,1,1) on 127.0.0.1 with lbhealthd.",
    )
    parser.add_argument("--short", action="store_true", help="a ~15 s run (for CI)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: new)")
    parser.add_argument(
        "--enforce", action="store_true", help="run the daemon with enforce_weights on"
    )
    args = parser.parse_args(argv)
    try:
        require("demo", "lbhealthd demo")
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_demo(args.out, args.short, args.enforce)


if __name__ == "__main__":
    sys.exit(main())
