"""Checkpoints of agent loops: the group commit that makes iterations durable (usage ledger
row, new conversation messages, checkpoint head and events in one transaction for many
jobs), and reading a job's last checkpoint back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.model import JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.iterations import CommittedBatch, IterationConflict, IterationRecord, rows_of
from cofounder_server.store.models import (
    CheckpointMessageRow,
    CheckpointRow,
    JobRow,
    UsageLedgerRow,
    table_of,
)
from cofounder_server.store.sqlite_commit import SqliteGroupCommit


@dataclass(frozen=True)
class Checkpoint:
    """A job's loop after its last completed iteration."""

    iteration: int
    messages: list[dict[str, Any]]
    state: dict[str, Any]


log = logging.getLogger(__name__)

_RUNNING = JobStatus.RUNNING.value


class CheckpointStore:
    """Iterations in, checkpoints out. Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log
        self._sqlite: SqliteGroupCommit | None = None

    async def checkpoint(self, job_id: str) -> Checkpoint | None:
        """The last checkpoint, or ``None`` before the first iteration completed."""
        async with self._database.read() as session:
            head = await session.get(CheckpointRow, job_id)
            if head is None:
                return None
            rows = await session.scalars(
                select(CheckpointMessageRow.message)
                .where(
                    CheckpointMessageRow.job_id == job_id, CheckpointMessageRow.position < head.message_count
                )
                .order_by(CheckpointMessageRow.position)
            )
            return Checkpoint(int(head.iteration), [dict(m) for m in rows], dict(head.state))

    # --- the iteration write path (group commit) ----------------------------------------

    async def commit_iterations(
        self, records: Sequence[IterationRecord], *, runner_id: str, now: datetime
    ) -> CommittedBatch:
        """Make a batch of iterations durable in one transaction (the group commit).

        The jobs are re-read in the transaction: an iteration's ledger row is recorded while
        its job is still ``runner_id``'s (the model call was paid for), the rest (messages,
        checkpoint, events) only while the job is also still RUNNING; those jobs come back
        as ``accepted``, with the stored events. A transaction PostgreSQL aborted to resolve
        a deadlock or a serialization failure is tried again. Raises ``Unavailable`` when SQL
        cannot be reached, and :class:`~.iterations.IterationConflict` when an iteration was
        recorded before (by another runner): then nothing of the batch is stored.
        """
        for attempt in range(3):
            try:
                return await self._commit_iterations(records, runner_id=runner_id, now=now)
            except IntegrityError as error:
                raise IterationConflict(str(error.orig)) from error
            except DBAPIError as error:
                if attempt == 2 or not _transient(error):
                    raise
                log.info("iteration batch of %d aborted (%s); retrying", len(records), error.orig)
        raise AssertionError("unreachable")

    async def _commit_iterations(
        self, records: Sequence[IterationRecord], *, runner_id: str, now: datetime
    ) -> CommittedBatch:
        if self._database.dialect_name == "sqlite":
            if self._sqlite is None:
                self._sqlite = SqliteGroupCommit(self._database, self._event_log.prune_horizon)
            return await self._sqlite.commit(records, runner_id=runner_id, now=now)
        async with self._database.write() as session:
            jobs = await self._lock_jobs(session, [record.job_id for record in records])
            ours = {job_id for job_id, (_, runner) in jobs.items() if runner == runner_id}
            accepted = {job_id for job_id in ours if jobs[job_id][0] == _RUNNING}
            rows = [(record, rows_of(record)) for record in records if record.job_id in ours]
            if rows:
                await session.execute(table_of(UsageLedgerRow).insert(), [r.ledger for _, r in rows])
            mine = [(record, r) for record, r in rows if record.job_id in accepted]
            messages = [message for _, r in mine for message in r.messages]
            if messages:
                await session.execute(table_of(CheckpointMessageRow).insert(), messages)
            if mine:
                await session.execute(_upsert_checkpoint(), [r.head for _, r in mine])
            with_events = [(record.job_id, record.events) for record, _ in mine if record.events]
            stored = (
                await self._event_log.append_many_in(session, with_events, now=now) if with_events else []
            )
        return CommittedBatch(accepted, [event for events in stored for event in events])

    async def close(self) -> None:
        """Release what the group commit holds (SQLite: its connection)."""
        if self._sqlite is not None:
            await self._sqlite.close()

    async def _lock_jobs(
        self, session: AsyncSession, job_ids: Sequence[str]
    ) -> dict[str, tuple[str, str | None]]:
        """``{job_id: (status, runner_id)}``, locking the rows until commit, in job_id order
        (as lease renewal takes them: no deadlock). PostgreSQL only: SQLite's group commit
        holds the database's write lock instead."""
        query = (
            select(JobRow.job_id, JobRow.status, JobRow.runner_id)
            .where(JobRow.job_id.in_(sorted(job_ids)))
            .order_by(JobRow.job_id)
            .with_for_update()
        )
        result = await session.execute(query)
        return {str(job_id): (str(status), runner) for job_id, status, runner in result.all()}


@functools.cache
def _upsert_checkpoint() -> Insert:
    """The checkpoint head upsert (PostgreSQL), built once."""
    table = table_of(CheckpointRow)
    statement = postgresql.insert(table)
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=[table.c.job_id],
        set_={
            name: statement.excluded[name] for name in ("iteration", "message_count", "state", "update_time")
        },
    )
    return upsert


def _transient(error: DBAPIError) -> bool:
    """Deadlock detected, serialization failure (PostgreSQL SQLSTATE 40P01, 40001)."""
    return getattr(error.orig, "sqlstate", None) in ("40P01", "40001")
