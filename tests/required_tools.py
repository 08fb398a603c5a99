"""External programs some tests run: missing, such a test skips, unless the environment says
every tool must be there (``LBHEALTHD_REQUIRE_TOOLS=1``, set by .ci/run), when it fails."""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str, package: str) -> str:
    """The path of ``program``; skip (or fail, under LBHEALTHD_REQUIRE_TOOLS=1) without it."""
    found = shutil.which(program)
    if found is not None:
        return found
    message = f"{program} not found; install Debian's {package} package (.ci/run does)"
    if os.environ.get("LBHEALTHD_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{message}, and LBHEALTHD_REQUIRE_TOOLS=1 requires it")
    pytest.skip(message)


__all__ = ["require"]
