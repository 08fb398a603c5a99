"""What a cgroup v2 directory limits: its CPU quota and usage, and its memory use and limit.

Each file is read on its own; one that is missing, unreadable or garbled leaves its field
``None``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Cgroup:
    """What a cgroup v2 directory limits; ``None`` where there is no limit or no file."""

    cpus: float | None = None  # cpu.max quota / period
    memory: float | None = None  # memory.current / memory.max
    usage_usec: int | None = None  # cpu.stat usage_usec, for the share of the quota used


def parse_cpu_max(text: str) -> float | None:
    """``"200000 100000"`` → 2.0 CPUs; ``"max 100000"`` (no quota) or garbage → None."""
    words = text.split()
    if not words or words[0] == "max":
        return None
    try:
        quota = int(words[0])
        period = int(words[1]) if len(words) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_memory_max(text: str) -> int | None:
    """``"536870912"`` → bytes; ``"max"`` (no limit) or garbage → None."""
    try:
        limit = int(text.strip())
    except ValueError:
        return None
    return limit if limit > 0 else None


def parse_usage_usec(text: str) -> int | None:
    """``usage_usec`` from ``cpu.stat``, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_cgroup(root: Path) -> Cgroup:
    """Read ``cpu.max``, ``cpu.stat``, ``memory.max`` and ``memory.current`` under ``root``."""
    text = _read(root / "cpu.max")
    cpus = parse_cpu_max(text) if text is not None else None
    text = _read(root / "cpu.stat")
    usage = parse_usage_usec(text) if text is not None else None
    memory = None
    limit_text = _read(root / "memory.max")
    current_text = _read(root / "memory.current")
    limit = parse_memory_max(limit_text) if limit_text is not None else None
    if limit is not None and current_text is not None:
        with contextlib.suppress(ValueError):
            memory = max(0, int(current_text.strip())) / limit
    return Cgroup(cpus=cpus, memory=memory, usage_usec=usage)
