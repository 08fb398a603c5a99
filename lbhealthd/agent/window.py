"""Smoothing the CPU share over a window, so that one busy second is not reported as overload.

The agent samples CPU once a second; it reports the mean of the samples taken within the last
``window`` seconds (the latest sample always counts, so a window shorter than the sampling
interval, or 0, reports the latest sample as it is). A sample whose source failed is left out
of the mean; with no known sample in the window the CPU is unknown.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_WINDOW = 5.0
MAX_WINDOW = 600.0


def check_window(seconds: float) -> float:
    """``seconds`` if it is a usable window (0..``MAX_WINDOW``), else ValueError."""
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_WINDOW:
        raise ValueError(f"window must be between 0s and {MAX_WINDOW:g}s, got {seconds!r}")
    return float(seconds)


class Window:
    """The samples of the last ``seconds`` seconds and their mean."""

    def __init__(self, seconds: float = DEFAULT_WINDOW) -> None:
        self.seconds = check_window(seconds)
        self._samples: deque[tuple[float, float | None]] = deque()

    def add(self, at: float, value: float | None) -> None:
        """Record the sample taken at ``at`` (None: its source failed); older ones age out."""
        self._samples.append((at, value))
        while len(self._samples) > 1 and self._samples[0][0] <= at - self.seconds:
            self._samples.popleft()

    def value(self, now: float) -> float | None:
        """The mean of the known samples taken after ``now - seconds`` (a 5 s window holds
        5 samples a second apart), the latest sample counted always; None when none of them is
        known."""
        if not self._samples:
            return None
        latest = self._samples[-1]
        if self.seconds == 0:
            return latest[1]
        start = now - self.seconds
        known = [v for at, v in self._samples if v is not None and at > start]
        if latest[0] <= start and latest[1] is not None:
            known.append(latest[1])
        return sum(known) / len(known) if known else None
