"""Fixtures of the integration tests."""

from tests.engine_runs import cameras  # noqa: F401  (the test cameras, for the tests that run streams)
