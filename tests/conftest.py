"""Shared fixtures and settings. Fixtures that start real processes live in plugin modules."""

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures_haproxy", "tests.fixtures_memory"]

# CI runs the property tests several times harder than a developer's run; "thorough" is for a
# long run by hand (HYPOTHESIS_PROFILE=thorough).
settings.register_profile(
    "thorough", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs the CLI in-process configures logging for the process: undo it, so
    the next test sees structlog's defaults whatever ran before it."""
    yield
    structlog.reset_defaults()
