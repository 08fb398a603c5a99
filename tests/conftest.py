"""Shared fixtures. Fixtures that start real processes live in their own plugin modules."""

pytest_plugins = ["tests.fixtures_haproxy"]
