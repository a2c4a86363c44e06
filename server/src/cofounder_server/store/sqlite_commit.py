"""Group commits on SQLite in one trip to a thread.

Through SQLAlchemy on aiosqlite, each statement of a group commit is several hops to the
driver's thread and back, and every hop waits for a turn of the event loop that all agents
share: the commit's statements queue behind the agents it has just released, so SQLite
and the agents take turns instead of working at once (measured: the loop idle a third of
the time, ~3,000 iterations/s at 200 jobs). Here the whole transaction is one function run
in a worker thread on a connection of its own, while the loop keeps running agents:
SQLite releases the GIL while it works.

The rows are the same as on the SQLAlchemy path (``CheckpointStore.commit_iterations`` on
PostgreSQL), built by the same :func:`~.iterations.rows_of`: every value passes through its
column type's own bind processor, so what is stored is byte for byte what SQLAlchemy
stores, and sequences and retention follow the event log's rules (``EventLogRepository``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, exc
from sqlalchemy.engine import Dialect

from cofounder_server.domain.events import JobEvent, to_json
from cofounder_server.store.database import (
    Database,
    configure_sqlite_connection,
    unavailable_on_connection_error,
)
from cofounder_server.store.events import job_stream
from cofounder_server.store.iterations import CommittedBatch, IterationRecord, rows_of
from cofounder_server.store.models import (
    CheckpointMessageRow,
    CheckpointRow,
    JobEventRow,
    UsageLedgerRow,
    table_of,
)

Horizon = Callable[[int, int], int | None]
"""``(last, pruned_through) -> prune up to`` (or None): the event log's retention rule."""


class _Rows:
    """Parameters for an INSERT of given columns, each value through its type's processor."""

    def __init__(
        self, table: Table, columns: tuple[str, ...], dialect: Dialect, upsert_key: str = ""
    ) -> None:
        names = ", ".join(columns)
        self.sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"
        if upsert_key:
            updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name != upsert_key)
            self.sql += f" ON CONFLICT ({upsert_key}) DO UPDATE SET {updates}"
        self.columns = columns
        self._processors = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
        ]
        self._values = itemgetter(*columns)

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = self._values(row)
        return tuple(
            value if process is None else process(value)
            for value, process in zip(values, self._processors, strict=True)
        )


Statement = tuple[str, tuple[Any, ...]]
"""SQL and its parameters."""


@dataclass
class _Prepared:
    job_id: str
    ledger: Statement
    messages: list[Statement]
    head: Statement
    events: list[tuple[Any, ...]]
    """(type, time, payload) of each event, processed; the thread adds job id and sequence."""


class SqliteGroupCommit:
    """The SQLite half of ``CheckpointStore.commit_iterations``. One per store; calls must not
    overlap (the iteration writer makes one at a time)."""

    def __init__(self, database: Database, horizon: Horizon) -> None:
        self._database = database
        self._path = database.engine.url.database or ""
        self._dialect = database.engine.dialect
        self._horizon = horizon
        self._connection: sqlite3.Connection | None = None
        self._plans: dict[tuple[str, tuple[str, ...], str], _Rows] = {}

    async def commit(
        self, records: Sequence[IterationRecord], *, runner_id: str, now: datetime
    ) -> CommittedBatch:
        """See ``CheckpointStore.commit_iterations``."""
        prepared = [self._prepare(record, now) for record in records]
        async with unavailable_on_connection_error(), self._database.observe_writes():
            accepted, firsts = await asyncio.to_thread(self._commit, prepared, runner_id)
        events = [
            JobEvent(job_id=record.job_id, sequence=firsts[record.job_id] + index, time=now, payload=payload)
            for record in records
            if record.job_id in firsts
            for index, payload in enumerate(record.events)
        ]
        return CommittedBatch(accepted, events)

    async def close(self) -> None:
        """Close the connection (opened again if needed)."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.to_thread(connection.close)

    def _statement(self, table: Table, row: Mapping[str, Any], upsert_key: str = "") -> Statement:
        plan = self._plan(table, tuple(row), upsert_key)
        return plan.sql, plan.parameters(row)

    def _plan(self, table: Table, columns: tuple[str, ...], upsert_key: str = "") -> _Rows:
        key = (table.name, columns, upsert_key)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Rows(table, columns, self._dialect, upsert_key)
        return plan

    def _prepare(self, record: IterationRecord, now: datetime) -> _Prepared:
        events = self._plan(table_of(JobEventRow), ("type", "time", "payload"))
        rows = rows_of(record)
        return _Prepared(
            job_id=record.job_id,
            ledger=self._statement(table_of(UsageLedgerRow), rows.ledger),
            messages=[self._statement(table_of(CheckpointMessageRow), message) for message in rows.messages],
            head=self._statement(table_of(CheckpointRow), rows.head, "job_id"),
            events=[
                events.parameters({"type": payload.TYPE, "time": now, "payload": to_json(payload)})
                for payload in record.events
            ],
        )

    # --- in the worker thread -----------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self._path, timeout=5.0, check_same_thread=False)
            configure_sqlite_connection(connection)
            self._connection = connection
        return self._connection

    def _commit(self, batch: list[_Prepared], runner_id: str) -> tuple[set[str], dict[str, int]]:
        try:
            connection = self._open()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = self._write(connection, batch, runner_id)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result
        except sqlite3.IntegrityError as error:
            raise exc.IntegrityError("group commit", None, error) from error
        except sqlite3.OperationalError as error:
            raise exc.OperationalError("group commit", None, error) from error
        except sqlite3.DatabaseError as error:
            raise exc.DatabaseError("group commit", None, error) from error

    def _write(
        self, connection: sqlite3.Connection, batch: list[_Prepared], runner_id: str
    ) -> tuple[set[str], dict[str, int]]:
        ids = [item.job_id for item in batch]
        jobs = connection.execute(
            f"SELECT job_id, status, runner_id FROM jobs WHERE job_id IN ({', '.join('?' * len(ids))})", ids
        ).fetchall()
        ours = {job_id for job_id, _, runner in jobs if runner == runner_id}
        accepted = {job_id for job_id, status, runner in jobs if runner == runner_id and status == "running"}
        mine = [item for item in batch if item.job_id in accepted]
        _execute_grouped(
            connection,
            [
                *(item.ledger for item in batch if item.job_id in ours),
                *(message for item in mine for message in item.messages),
                *(item.head for item in mine),
            ],
        )
        return accepted, self._append_events(connection, [item for item in mine if item.events])

    def _append_events(self, connection: sqlite3.Connection, items: list[_Prepared]) -> dict[str, int]:
        """As ``EventLogRepository.append_many_in``: sequences from the counters, retention."""
        by_count: dict[int, list[str]] = {}
        for item in items:
            by_count.setdefault(len(item.events), []).append(job_stream(item.job_id))
        advanced: dict[str, tuple[int, int]] = {}
        for count, streams in by_count.items():
            advanced.update(
                (stream, (last, pruned))
                for stream, last, pruned in connection.execute(
                    "UPDATE event_counters SET last_sequence = last_sequence + ? "
                    f"WHERE stream IN ({', '.join('?' * len(streams))}) "
                    "RETURNING stream, last_sequence, pruned_through",
                    [count, *streams],
                )
            )
        firsts: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        for item in items:
            stream, count = job_stream(item.job_id), len(item.events)
            if stream in advanced:
                last, pruned = advanced[stream]
            else:
                last, pruned = connection.execute(
                    "INSERT INTO event_counters (stream, last_sequence, pruned_through) VALUES (?, ?, 0) "
                    "ON CONFLICT (stream) DO UPDATE "
                    "SET last_sequence = last_sequence + excluded.last_sequence "
                    "RETURNING last_sequence, pruned_through",
                    (stream, count),
                ).fetchone()
            first = firsts[item.job_id] = last - count + 1
            rows.extend(
                (item.job_id, first + index, type_, time, payload)
                for index, (type_, time, payload) in enumerate(item.events)
            )
            horizon = self._horizon(last, pruned)
            if horizon is not None:
                connection.execute(
                    "DELETE FROM job_events WHERE job_id = ? AND sequence <= ?", (item.job_id, horizon)
                )
                connection.execute(
                    "UPDATE event_counters SET pruned_through = ? WHERE stream = ?", (horizon, stream)
                )
        connection.executemany(
            "INSERT INTO job_events (job_id, sequence, type, time, payload) VALUES (?, ?, ?, ?, ?)", rows
        )
        return firsts


def _execute_grouped(connection: sqlite3.Connection, statements: list[Statement]) -> None:
    """Run the statements in order, consecutive ones with the same SQL as one executemany."""
    start = 0
    while start < len(statements):
        sql = statements[start][0]
        end = start
        while end < len(statements) and statements[end][0] == sql:
            end += 1
        connection.executemany(sql, [parameters for _, parameters in statements[start:end]])
        start = end
