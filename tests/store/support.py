"""Helpers shared by the store tests."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from cofounder_server.domain.model import AgentSpec, NewJob
from cofounder_server.store.database import Database, async_url
from cofounder_server.store.models import IdempotencyKeyRow

POSTGRES_URL = os.environ.get("COFOUNDER_TEST_DATABASE_URL", "")

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
"""A fixed "now" for tests; the store takes time as an argument, never from the system."""

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.external,
            pytest.mark.skipif(not POSTGRES_URL, reason="COFOUNDER_TEST_DATABASE_URL is not set"),
        ],
    ),
]


def new_job(owner_id: str = "alice", project_id: str = "proj-1", **overrides: Any) -> NewJob:
    """A valid job request; keyword arguments replace its fields."""
    job = NewJob(
        owner_id=owner_id,
        project_id=project_id,
        goal="ship the landing page",
        daily_budget_microdollars=5_000_000,
        agent=AgentSpec(brain="scripted", model="test-model", config={"turns": ["a", "b"], "n": 2}),
        labels={"team": "growth"},
    )
    return replace(job, **overrides)


def submit_key(resource_id: str) -> IdempotencyKeyRow:
    """Alice's stored SubmitJob request ``req-1`` (fingerprint ``fp``) that made ``resource_id``."""
    return IdempotencyKeyRow(
        owner_id="alice",
        operation="SubmitJob",
        request_id="req-1",
        fingerprint="fp",
        resource_id=resource_id,
        create_time=T0,
    )


class PostgresDatabases:
    """Creates throwaway PostgreSQL databases on the server named by the admin URL."""

    def __init__(self, admin_url: str) -> None:
        self._admin = make_url(admin_url).set(drivername="postgresql")
        self._created: list[str] = []

    async def create(self) -> str:
        """A new empty database's URL."""
        name = f"cofounder_store_test_{uuid.uuid4().hex[:12]}"
        await self._execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self._admin.set(database=name).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        """Drop every database this object created."""
        for name in self._created:
            await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _execute(self, sql: str) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        engine = create_async_engine(
            async_url(self._admin.render_as_string(hide_password=False)), isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as connection:
                await connection.exec_driver_sql(sql)
        finally:
            await engine.dispose()


async def wait_until_blocked(database: Database, task: asyncio.Task[object]) -> None:
    """Return once ``task`` waits for a lock the test holds in an open transaction.

    PostgreSQL reports waiting sessions, so this is exact there. SQLite waits inside the
    driver's thread, invisible from here: the task gets a moment to start, and the test's
    assertions must hold however far it got.
    """
    if database.dialect_name != "postgresql":
        await asyncio.sleep(0.05)
        assert not task.done()
        return
    probe = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        assert not task.done(), "the task finished instead of waiting for the lock"
        async with database.read() as session:
            if await session.scalar(probe):
                return
        assert asyncio.get_running_loop().time() < deadline, "the task never waited for the lock"
        await asyncio.sleep(0.01)
