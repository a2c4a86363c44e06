"""The health monitor says in one log line which dependency fails and why."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from cofounder_server.api.health import HealthMonitor, HealthServicer
from cofounder_server.domain.errors import Unavailable


async def test_the_not_serving_line_names_each_failure_and_its_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = True

    async def writes() -> None:
        if full:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as error:
                raise Unavailable("the database is unavailable (OperationalError)") from error

    async def redis() -> None:
        if full:
            await asyncio.Event().wait()

    monitor = HealthMonitor(
        HealthServicer(), [], {"sql writes": writes, "redis": redis}, 60, probe_timeout_seconds=0.05
    )
    caplog.set_level(logging.INFO, logger="cofounder_server.api.health")

    assert not await monitor.check_once()
    assert not await monitor.check_once()
    full = False
    assert await monitor.check_once()

    assert [r.getMessage() for r in caplog.records] == [
        "health: NOT_SERVING, failing: sql writes (database or disk is full); "
        "redis (no answer within 0.05 s)",
        "health: SERVING",
    ]
