"""The optional parts of lbhealthd and the check that one is installed.

The core (``pip install lbhealthd``) drives HAProxy and runs the host agent. The rest comes with
an extra: ``aws`` (the ELBv2 driver: aiobotocore), ``fast`` (uvloop), ``demo`` (matplotlib for
the demo's plot). Nothing imports an extra's modules at import time; the code that needs one
calls :func:`require` first, so a missing extra is one clear refusal (``MissingExtra``, exit 2
from the CLI) naming what to install, rather than an ImportError from deep inside a round.
"""

from __future__ import annotations

import importlib

from lbhealthd.errors import MissingExtra

__all__ = ["EXTRAS", "installed", "require"]

#: Each extra and the top-level modules it brings (the first is the one named in messages).
EXTRAS: dict[str, tuple[str, ...]] = {
    "aws": ("aiobotocore", "botocore"),
    "fast": ("uvloop",),
    "demo": ("matplotlib",),
}


def installed(module: str) -> bool:
    """Whether ``module`` imports. It is imported (the caller is about to use it): a module
    that is present but broken, such as a compiled part built for another Python, counts as
    missing too."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(extra: str, needed_by: str) -> None:
    """Raise ``MissingExtra`` unless every module of ``extra`` is installed; ``needed_by`` names
    the command or setting that needs it (``lbhealthd demo``, ``load_balancer.type
    aws_elbv2``)."""
    for module in EXTRAS[extra]:
        if not installed(module):
            raise MissingExtra(extra, module, needed_by)
