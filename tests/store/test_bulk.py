"""Bulk inserts store what the Core statement stores, and an upsert replaces the row."""

from __future__ import annotations

import sqlite3
from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from cofounder_server.store.bulk import insert_rows, insert_tuples
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.models import (
    CheckpointMessageRow,
    CheckpointRow,
    JobEventRow,
    UsageLedgerRow,
    table_of,
)

from .support import T0, new_job

TABLES = (UsageLedgerRow, CheckpointMessageRow, CheckpointRow, JobEventRow)


def _rows(job_id: str) -> dict[type[Any], list[dict[str, Any]]]:
    """Rows of every table a group commit writes, with values that exercise each column type."""
    return {
        UsageLedgerRow: [
            {
                "job_id": job_id,
                "iteration": 1,
                "window_start": T0.replace(hour=0),
                "model": "claude-ünï",
                "input_tokens": 12_345,
                "output_tokens": 0,
                "cost_microdollars": 9_876_543_210,
                "time": T0 + timedelta(microseconds=123_456),
            }
        ],
        CheckpointMessageRow: [
            {"job_id": job_id, "position": 0, "message": {"role": "user", "content": 'Goal ✓ "quoted"\n'}},
            {
                "job_id": job_id,
                "position": 1,
                "message": {"role": "assistant", "content": [{"n": 1.5, "x": None}]},
            },
        ],
        CheckpointRow: [
            {
                "job_id": job_id,
                "iteration": 1,
                "message_count": 2,
                "conversation_bytes": 4_096,
                "state": {"steered": [], "nested": {"a": True}},
                "update_time": T0,
            }
        ],
        JobEventRow: [
            {"job_id": job_id, "sequence": 2, "type": "agent.thinking", "time": T0, "payload": {"text": "☃"}},
            {"job_id": job_id, "sequence": 3, "type": "agent.spoke", "time": T0, "payload": {}},
        ],
    }


async def _two_jobs(database: Database) -> tuple[str, str]:
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    first, _ = await jobs.create(new_job(), request_id=None, fingerprint="f", now=T0)
    second, _ = await jobs.create(new_job(), request_id=None, fingerprint="f", now=T0)
    return first.job_id, second.job_id


async def test_sqlite_stores_the_bytes_the_core_statement_stores(database: Database) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("reads the SQLite file's bytes")
    ours, theirs = await _two_jobs(database)

    def write(connection: Connection) -> None:
        for table, rows in _rows(ours).items():
            insert_rows(connection, table_of(table), rows)
        for table, rows in _rows(theirs).items():
            connection.execute(table_of(table).insert(), rows)

    await database.transact(write)
    path = database.engine.url.database
    assert path
    with sqlite3.connect(path) as connection:
        for table in TABLES:
            names = [column.name for column in table_of(table).columns if column.name != "job_id"]
            quoted = ", ".join(f"quote({name})" for name in names)
            stored = {
                job_id: sorted(rows)
                for job_id in (ours, theirs)
                for rows in [
                    list(
                        connection.execute(
                            f"SELECT {quoted} FROM {table.__tablename__} WHERE job_id = ?", (job_id,)
                        )
                    )
                ]
            }
            assert stored[ours], table.__tablename__
            assert stored[ours] == stored[theirs], table.__tablename__


async def test_an_upsert_replaces_the_rows_other_columns(database: Database) -> None:
    job_id, _ = await _two_jobs(database)
    head = _rows(job_id)[CheckpointRow][0]
    later = {
        **head,
        "iteration": 2,
        "message_count": 5,
        "state": {"next": 1},
        "update_time": T0 + timedelta(1),
    }
    await database.transact(lambda c: insert_rows(c, table_of(CheckpointRow), [head], upsert_key="job_id"))
    await database.transact(lambda c: insert_rows(c, table_of(CheckpointRow), [later], upsert_key="job_id"))
    async with database.read() as session:
        rows = (await session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id))).all()
    assert [(row.iteration, row.message_count, row.state, row.update_time) for row in rows] == [
        (2, 5, {"next": 1}, T0 + timedelta(1))
    ]


async def test_a_violated_key_is_sqlalchemys_integrity_error_and_nothing_is_stored(
    database: Database,
) -> None:
    job_id, _ = await _two_jobs(database)
    ledger = _rows(job_id)[UsageLedgerRow]
    with pytest.raises(IntegrityError):
        await database.transact(lambda c: insert_rows(c, table_of(UsageLedgerRow), [*ledger, *ledger]))
    async with database.read() as session:
        assert (
            await session.scalars(select(UsageLedgerRow).where(UsageLedgerRow.job_id == job_id))
        ).all() == []


async def test_no_rows_is_no_statement(database: Database) -> None:
    await database.transact(lambda c: insert_rows(c, table_of(JobEventRow), []))


async def test_rows_sharing_a_time_and_rows_that_do_not_store_their_own(database: Database) -> None:
    """A time equal to the row before's is processed once; every row still stores its own."""
    job_id, _ = await _two_jobs(database)
    later = T0 + timedelta(microseconds=1)
    times = [T0, T0, later, T0, T0.astimezone(timezone(timedelta(hours=2)))]
    rows = [(job_id, 10 + n, "agent.thinking", time, {"n": n}) for n, time in enumerate(times)]
    columns = ("job_id", "sequence", "type", "time", "payload")
    await database.transact(lambda c: insert_tuples(c, table_of(JobEventRow), columns, rows))
    async with database.read() as session:
        stored = (
            await session.scalars(
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.sequence >= 10)
                .order_by(JobEventRow.sequence)
            )
        ).all()
    assert [(row.sequence, row.time, row.payload) for row in stored] == [
        (10 + n, time, {"n": n}) for n, time in enumerate(times)
    ]


async def test_a_row_of_the_wrong_width_is_refused(database: Database) -> None:
    job_id, _ = await _two_jobs(database)
    columns = ("job_id", "sequence", "type", "time", "payload")
    with pytest.raises(ValueError, match="rows of 5 values"):
        await database.transact(
            lambda c: insert_tuples(c, table_of(JobEventRow), columns, [(job_id, 1, "agent.thinking", T0)])
        )
