"""One reading of the load, and the protocol of anything that can take one."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Load:
    """One reading; ``None`` is a field whose source failed or is not known yet."""

    cpu: float | None = None  # share of the CPUs (or cgroup quota) used, 0..1
    load_per_core: float | None = None  # 1-minute load average / logical CPUs
    memory: float | None = None  # share of memory (or of the cgroup limit) used, 0..1
    cpus: float | None = None  # CPUs available: cgroup quota capped by affinity

    def as_dict(self) -> dict[str, float]:
        """The known fields, every one a finite float."""
        out = {}
        for f in fields(self):
            value = finite(getattr(self, f.name))
            if value is not None:
                out[f.name] = value
        return out


class LoadSource(Protocol):
    """Anything that gives the current load; ``LoadReader`` reads the real one."""

    def read(self) -> Load: ...
