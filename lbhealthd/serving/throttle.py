"""Pacing for log lines that would otherwise repeat as fast as their cause does."""

from __future__ import annotations

import time
from collections.abc import Callable

LOG_INTERVAL = 60.0  # seconds between two summaries of one kind


class Every:
    """``due()`` is true at most once per ``interval`` seconds (the first call included)."""

    def __init__(
        self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True
