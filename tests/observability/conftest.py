"""Observability tests run executor servers like tests/executor does (same fixtures)."""

from tests.executor.conftest import (  # noqa: F401  # fixtures, by import
    executor_settings,
    fresh_database_url,
    gate,
    manual_clock,
    project_id,
    shared_redis_url,
    start_server,
)
