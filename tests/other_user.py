"""Running a function in a forked child, as another user if asked, with a deadline.

For tests of what another local user can do to lbhealthd, and of reads that would block or
never end: the child is killed at the deadline, so a test that fails does not hang the run.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534
OTHER = 65533  # a second unprivileged uid, with no account: the kernel needs none

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

# What the child may allocate beyond what it has at the fork: a read without bound fails with
# MemoryError there instead of taking the machine's memory.
_HEADROOM = 512 * 1024 * 1024


def in_child(
    fn: Callable[..., Any], *args: Any, uid: int | None = None, timeout: float = 10
) -> str:
    """``fn(*args)`` in a forked child (as ``uid``, group the same number, when given):
    ``"ok: <result>"``, ``"<ExceptionType>: <message>"``, or ``"TIMEOUT"`` at the deadline."""
    ctx = multiprocessing.get_context("fork")
    results: Any = ctx.Queue()
    child = ctx.Process(target=_run, args=(results, fn, args, uid))
    child.start()
    try:
        return str(results.get(True, timeout))
    except queue.Empty:
        return "TIMEOUT"
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)


def _run(results: Any, fn: Callable[..., Any], args: tuple[Any, ...], uid: int | None) -> None:
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + _HEADROOM, size + _HEADROOM))
    try:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        results.put(f"ok: {fn(*args)}")
    except BaseException as exc:  # the child reports whatever happened to it
        results.put(f"{type(exc).__name__}: {exc}")


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own temp directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="lbhealthd-test-"))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
