"""The Database wrapper: URLs, SQLite settings, transactions, and "database down" as Unavailable."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, InterfaceError

from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.model import JobFilter
from cofounder_server.store.database import (
    Database,
    async_url,
    open_database,
    unavailable_on_connection_error,
)
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.migrate import upgrade_to_head
from cofounder_server.store.models import IdempotencyKeyRow
from tests.support import eventually, free_port

from .support import POSTGRES_URL, T0, PostgresDatabases, new_job


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/cofounder.db", "sqlite+aiosqlite:///data/cofounder.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgres://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgresql://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
    ],
)
def test_urls_are_pointed_at_the_async_driver(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url", ["mysql://u@db/app", "postgresql+psycopg2://u@db/app", "sqlite+pysqlite:///x"]
)
async def test_other_drivers_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        await open_database(url)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite:///file:db?mode=memory&uri=true"]
)
async def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        await open_database(url)


async def test_sqlite_connections_get_their_pragmas(tmp_path: Path) -> None:
    database = await open_database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        async with database.read() as session:
            values = {
                pragma: (await session.execute(text(f"PRAGMA {pragma}"))).scalar()
                for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        await database.close()
    # synchronous 1 is NORMAL.
    assert values == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 5000}


def _try_write_lock(path: Path) -> bool:
    """Whether a separate connection can take the write lock right now (no waiting)."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


async def test_sqlite_write_transactions_hold_the_write_lock_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    database = await open_database(f"sqlite:///{path}")
    try:
        async with database.read() as session:
            await session.execute(text("SELECT 1"))
            assert await asyncio.to_thread(_try_write_lock, path)
        async with database.write() as session:
            await session.execute(text("SELECT 1"))
            assert not await asyncio.to_thread(_try_write_lock, path)
        assert await asyncio.to_thread(_try_write_lock, path)
    finally:
        await database.close()


async def test_sqlite_transactions_are_atomic(tmp_path: Path) -> None:
    """A failed transaction leaves nothing behind, reads and DDL included."""
    database = await open_database(f"sqlite:///{tmp_path / 'atomic.db'}")

    async def create_table_then_fail() -> None:
        async with database.write() as session:
            await session.execute(text("CREATE TABLE t (x INTEGER)"))
            raise RuntimeError

    try:
        with pytest.raises(RuntimeError):
            await create_table_then_fail()
        async with database.read() as session:
            tables = (await session.execute(text("SELECT name FROM sqlite_master"))).scalars().all()
        assert tables == []
    finally:
        await database.close()


async def test_ping(database: Database) -> None:
    await database.ping()


async def test_constraint_violations_are_not_reported_as_unavailable(database: Database) -> None:
    def key() -> IdempotencyKeyRow:
        return IdempotencyKeyRow(
            owner_id="o", operation="op", request_id="r", fingerprint="f", resource_id="x", create_time=T0
        )

    async with database.write() as session:
        session.add(key())
    with pytest.raises(IntegrityError):
        async with database.write() as session:
            session.add(key())


async def _assert_unavailable(url: str) -> None:
    database = await open_database(url)
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    try:
        with pytest.raises(Unavailable):
            await database.ping()
        with pytest.raises(Unavailable):
            await jobs.get("00000000-0000-0000-0000-000000000000", owner_scope=None)
        with pytest.raises(Unavailable):
            await jobs.list(owner_scope=None, filter=JobFilter(), page_size=10, after=None)
        with pytest.raises(Unavailable):
            await jobs.create(new_job(), request_id="r", fingerprint="f", now=T0)
        with pytest.raises(Unavailable):
            await jobs.cancel("00000000-0000-0000-0000-000000000000", owner_scope=None, reason="", now=T0)
        with pytest.raises(Unavailable):
            await upgrade_to_head(url)
    finally:
        await database.close()


async def test_postgres_on_a_closed_port_is_unavailable() -> None:
    await _assert_unavailable(f"postgresql://postgres@127.0.0.1:{free_port()}/cofounder")


async def test_sqlite_in_an_unusable_directory_is_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    await _assert_unavailable(f"sqlite:///{not_a_directory / 'sub' / 'cofounder.db'}")


@pytest.mark.external
@pytest.mark.skipif(not POSTGRES_URL, reason="COFOUNDER_TEST_DATABASE_URL is not set")
async def test_postgres_without_the_database_is_unavailable() -> None:
    await _assert_unavailable(
        async_url(POSTGRES_URL).set(database="cofounder_no_such_database").render_as_string(False)
    )


@pytest.mark.external
@pytest.mark.skipif(not POSTGRES_URL, reason="COFOUNDER_TEST_DATABASE_URL is not set")
async def test_postgres_connections_closed_by_the_server_are_replaced(
    postgres_databases: PostgresDatabases,
) -> None:
    url = await postgres_databases.create()
    await upgrade_to_head(url)
    database = await open_database(url)
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    other = await open_database(url)
    try:
        created, _ = await jobs.create(new_job(), request_id=None, fingerprint="f", now=T0)
        # As a server restart would: end every other session on this database.
        async with other.read() as session:
            ended = await session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert ended
        assert await jobs.get(created.job_id, owner_scope=None) == created
    finally:
        await other.close()
        await database.close()


async def test_a_cancel_that_breaks_the_rollback_is_still_a_cancel() -> None:
    """asyncpg answers the rollback of a query cancelled mid-flight with "another operation
    is in progress"; that must not turn the cancel into Unavailable, which loops that ride
    out outages would swallow (they then never stop)."""
    started = asyncio.Event()

    async def query() -> None:
        async with unavailable_on_connection_error():
            try:
                started.set()
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise InterfaceError("ROLLBACK", {}, Exception("another operation is in progress")) from None

    task = asyncio.create_task(query())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.external
@pytest.mark.skipif(not POSTGRES_URL, reason="COFOUNDER_TEST_DATABASE_URL is not set")
async def test_postgres_query_cancelled_mid_flight_raises_cancelled(
    postgres_databases: PostgresDatabases,
) -> None:
    url = await postgres_databases.create()
    database = await open_database(url)
    observer = await open_database(url)
    marker = f"cancel_me_{uuid.uuid4().hex}"

    async def slow_query() -> None:
        async with database.read() as session:
            await session.execute(text(f"SELECT pg_sleep(30) AS {marker}"))

    async def running() -> int:
        async with observer.read() as session:
            found = await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE :q"),
                {"q": f"%AS {marker}%"},
            )
        return int(found or 0)

    try:
        task = asyncio.create_task(slow_query())
        await eventually(running, lambda n: n == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await database.ping()
    finally:
        await database.close()
        await observer.close()
