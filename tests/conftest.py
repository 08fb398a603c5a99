"""Shared fixtures and settings. Fixtures that start real processes live in plugin modules."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures_haproxy"]

# CI runs the property tests at full strength; a developer's run stays quick.
settings.register_profile(
    "ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
