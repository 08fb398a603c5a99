"""Fixtures for tests that drive the reconciler in memory (tests/test_reconciler.py's Harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lbhealthd.drivers.memory import MemoryDriver
from tests.test_reconciler import Harness, Logs


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    """Build a Harness (keyword arguments override the pool's config); closed at the end."""
    made: list[Harness] = []

    def build(driver: MemoryDriver | None = None, **pool: Any) -> Harness:
        made.append(Harness(tmp_path, driver, **pool))
        return made[-1]

    yield build
    for h in made:
        await h.reconciler.close()


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every log event of the test, as structlog's capture records them."""
    with capture_logs() as captured:
        yield captured
