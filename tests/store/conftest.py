"""Fixtures for the store tests: every test runs on SQLite, and on PostgreSQL when
``COFOUNDER_TEST_DATABASE_URL`` names a server (each run then works in databases of its
own, created here and dropped at the end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from cofounder_server.store.database import Database, open_database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.migrate import upgrade_to_head
from cofounder_server.store.models import Base

from .support import BACKENDS, POSTGRES_URL, PostgresDatabases


@pytest.fixture(scope="session")
async def postgres_databases() -> AsyncIterator[PostgresDatabases | None]:
    """The factory of throwaway PostgreSQL databases, or ``None`` without a server."""
    if not POSTGRES_URL:
        yield None
        return
    databases = PostgresDatabases(POSTGRES_URL)
    yield databases
    await databases.drop_all()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return str(request.param)


async def _empty_url(backend: str, directory: Path, postgres: PostgresDatabases | None) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / 'store.db'}"
    assert postgres is not None
    return await postgres.create()


@pytest.fixture
async def empty_url(backend: str, tmp_path: Path, postgres_databases: PostgresDatabases | None) -> str:
    """The URL of a new database with no tables."""
    return await _empty_url(backend, tmp_path, postgres_databases)


@pytest.fixture(scope="session")
async def migrated_url(
    backend: str, tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases | None
) -> str:
    """The URL of a database at the newest schema, shared by the session's tests."""
    url = await _empty_url(backend, tmp_path_factory.mktemp(backend), postgres_databases)
    await upgrade_to_head(url)
    return url


@pytest.fixture
async def database(migrated_url: str) -> AsyncIterator[Database]:
    """A ``Database`` on the migrated schema, with every table emptied for this test."""
    db = await open_database(migrated_url)
    async with db.write() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))
    yield db
    await db.close()


@pytest.fixture
def jobs(database: Database) -> JobRepository:
    """The job repository under test."""
    return JobRepository(database, EventLogRepository(database, retention_events=1000))
