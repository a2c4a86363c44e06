"""Checkpoints of agent loops: the group commit that makes runs durable (usage ledger rows,
new conversation messages, checkpoint heads, job transitions and events in one transaction
for many jobs), and reading checkpoints back.

The group commit is one function on a synchronous connection, run through
:meth:`Database.transact` on both databases (on SQLite in one trip to the writer thread), with
a constant number of statements per batch: each kind of row is one ``executemany``, and job
transitions that set the same values are one ``UPDATE ... RETURNING``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Update, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from cofounder_server.domain.changes import Spend
from cofounder_server.domain.events import EventPayload, JobStatusChanged
from cofounder_server.domain.model import Job, JobStatus
from cofounder_server.store.bulk import insert_tuples
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository, append_job_events
from cofounder_server.store.iterations import (
    HEAD_COLUMNS,
    LEDGER_COLUMNS,
    MESSAGE_COLUMNS,
    CommittedBatch,
    Ending,
    IterationConflict,
    Parking,
    RunRecord,
    Transition,
    rows_of,
)
from cofounder_server.store.jobs import bumped, job_of
from cofounder_server.store.ledger import window_spend, window_sums
from cofounder_server.store.models import (
    CheckpointMessageRow,
    CheckpointRow,
    JobRow,
    UsageLedgerRow,
    table_of,
)


@dataclass(frozen=True)
class Checkpoint:
    """A job's loop after its last completed iteration."""

    iteration: int
    messages: list[dict[str, Any]]
    state: dict[str, Any]
    conversation_bytes: int = 0
    """What the conversation weighs, as its last iteration recorded it (0: not recorded)."""


@dataclass(frozen=True)
class RunStart:
    """What a run of a job starts from: its last checkpoint (``None`` before the first
    iteration) and the spend of the budget window it starts in."""

    checkpoint: Checkpoint | None
    window: datetime
    spend: Spend


log = logging.getLogger(__name__)

_RUNNING = JobStatus.RUNNING.value


class CheckpointStore:
    """Runs in, checkpoints out. Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log

    async def checkpoint(self, job_id: str) -> Checkpoint | None:
        """The last checkpoint, or ``None`` before the first iteration completed."""
        async with self._database.read() as session:
            return (await session.run_sync(lambda sync: _checkpoints(sync.connection(), [job_id]))).get(
                job_id
            )

    async def starts(self, jobs: Sequence[Job], window: datetime) -> dict[str, RunStart]:
        """What each of ``jobs`` starts a run from, in one read of four statements whatever
        their number: checkpoints, messages, spend and top-ups of ``window``."""
        if not jobs:
            return {}
        async with self._database.read() as session:
            return await session.run_sync(lambda sync: starts_in(sync.connection(), jobs, window))

    # --- the group commit ---------------------------------------------------------------

    async def commit(self, records: Sequence[RunRecord], *, runner_id: str, now: datetime) -> CommittedBatch:
        """Make a batch of run records durable in one transaction (the group commit).

        The jobs are re-read (on PostgreSQL locked, in job_id order) in the transaction: an
        iteration's ledger row is recorded while its job is still ``runner_id``'s (the model
        call was paid for), the rest (messages, checkpoint, transition, events) only while the
        job is also still RUNNING; those jobs come back as ``accepted`` with the stored events
        and the jobs their transitions committed. A transaction PostgreSQL aborted to resolve
        a deadlock or a serialization failure is tried again. Raises ``Unavailable`` when SQL
        cannot be reached, and :class:`~.iterations.IterationConflict` when an iteration was
        recorded before (by another runner): then nothing of the batch is stored.
        """
        ids = {record.job_id for record in records}
        if len(ids) != len(records):
            raise ValueError("one record per job in a batch")
        for attempt in range(3):
            try:
                return await self._database.transact(
                    _commit, records, runner_id, _utc(now), self._event_log.prune_horizon
                )
            except IntegrityError as error:
                raise IterationConflict(str(error.orig)) from error
            except DBAPIError as error:
                if attempt == 2 or not _transient(error):
                    raise
                log.info("run batch of %d aborted (%s); retrying", len(records), error.orig)
        raise AssertionError("unreachable")


def _commit(
    connection: Connection,
    records: Sequence[RunRecord],
    runner_id: str,
    now: datetime,
    horizon: Any,
) -> CommittedBatch:
    query = (
        select(JobRow.job_id, JobRow.status, JobRow.runner_id, JobRow.pending_escalations)
        .where(JobRow.job_id.in_(sorted(record.job_id for record in records)))
        .order_by(JobRow.job_id)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    found = {
        str(job_id): (status, runner, pending)
        for job_id, status, runner, pending in connection.execute(query)
    }
    ours = {job_id for job_id, (_, runner, _) in found.items() if runner == runner_id}
    accepted = {job_id for job_id in ours if found[job_id][0] == _RUNNING}
    ledger: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    heads: list[tuple[Any, ...]] = []
    for record in records:
        if record.iteration is None or record.job_id not in ours:
            continue
        rows = rows_of(record.job_id, record.iteration, record.time)
        ledger.append(rows.ledger)
        if record.job_id in accepted:
            messages += rows.messages
            heads.append(rows.head)
    insert_tuples(connection, table_of(UsageLedgerRow), LEDGER_COLUMNS, ledger)
    insert_tuples(connection, table_of(CheckpointMessageRow), MESSAGE_COLUMNS, messages)
    insert_tuples(connection, table_of(CheckpointRow), HEAD_COLUMNS, heads, upsert_key="job_id")
    deferred = {
        record.job_id
        for record in records
        if isinstance(record.transition, Ending) and record.job_id in accepted and found[record.job_id][2]
    }
    transitioned = [
        record
        for record in records
        if record.transition is not None and record.job_id in accepted and record.job_id not in deferred
    ]
    jobs = _apply_transitions(connection, transitioned, runner_id, now)
    batches: list[tuple[str, Sequence[EventPayload]]] = []
    for record in records:
        if record.job_id not in accepted:
            continue
        events = list(record.events)
        if isinstance(record.transition, Ending) and record.job_id in jobs:
            ending = record.transition
            events.append(
                JobStatusChanged(
                    status=ending.status,
                    previous_status=JobStatus.RUNNING,
                    outcome=ending.outcome,
                    detail=ending.detail,
                )
            )
        if events:
            batches.append((record.job_id, events))
    stored = append_job_events(connection, batches, now=now, horizon=horizon) if batches else []
    pending = {job_id: tuple(found[job_id][2] or ()) for job_id in accepted}
    return CommittedBatch(accepted, [event for events in stored for event in events], jobs, deferred, pending)


def _apply_transitions(
    connection: Connection, records: Sequence[RunRecord], runner_id: str, now: datetime
) -> dict[str, Job]:
    """Apply the records' transitions, one ``UPDATE ... RETURNING`` per distinct set of values
    (every job completing its goal sets the same ones); the jobs as committed."""
    groups: defaultdict[Transition, list[str]] = defaultdict(list)
    for record in records:
        assert record.transition is not None
        groups[record.transition].append(record.job_id)
    jobs: dict[str, Job] = {}
    for transition, job_ids in groups.items():
        statement = _transition_statement(transition, now).where(
            JobRow.job_id.in_(job_ids), JobRow.status == _RUNNING, JobRow.runner_id == runner_id
        )
        for row in connection.execute(bumped(statement, now)):
            job = job_of(row)
            jobs[job.job_id] = job
    return jobs


def _transition_statement(transition: Transition, now: datetime) -> Update:
    if isinstance(transition, Parking):
        wake_at = None if transition.wake_at is None else _utc(transition.wake_at)
        return update(JobRow).values(agent_state=transition.agent_state.value, wake_at=wake_at)
    return update(JobRow).values(
        status=transition.status.value,
        outcome=transition.outcome.value,
        outcome_detail=transition.detail,
        agent_state=transition.agent_state.value,
        wake_at=None,
        end_time=now,
        runner_id=None,
    )


def _checkpoints(connection: Connection, job_ids: Sequence[str]) -> dict[str, Checkpoint]:
    heads = {
        str(job_id): (int(iteration), int(count), dict(state), int(size))
        for job_id, iteration, count, state, size in connection.execute(
            select(
                CheckpointRow.job_id,
                CheckpointRow.iteration,
                CheckpointRow.message_count,
                CheckpointRow.state,
                CheckpointRow.conversation_bytes,
            ).where(CheckpointRow.job_id.in_(list(job_ids)))
        )
    }
    if not heads:
        return {}
    messages: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in heads}
    rows = connection.execute(
        select(CheckpointMessageRow.job_id, CheckpointMessageRow.position, CheckpointMessageRow.message)
        .where(CheckpointMessageRow.job_id.in_(list(heads)))
        .order_by(CheckpointMessageRow.job_id, CheckpointMessageRow.position)
    )
    for job_id, position, message in rows:
        # Rows past the head's count belong to no committed checkpoint.
        if position < heads[job_id][1]:
            messages[job_id].append(dict(message))
    return {
        job_id: Checkpoint(iteration, messages[job_id], state, size)
        for job_id, (iteration, _, state, size) in heads.items()
    }


def starts_in(connection: Connection, jobs: Sequence[Job], window: datetime) -> dict[str, RunStart]:
    """:meth:`CheckpointStore.starts`, in ``connection``'s transaction."""
    ids = [job.job_id for job in jobs]
    start = _utc(window)
    checkpoints = _checkpoints(connection, ids)
    spent_sums, top_up_sums = window_sums(ids, start)
    spent = dict(connection.execute(spent_sums).all())
    top_ups = dict(connection.execute(top_up_sums).all())
    return {
        job.job_id: RunStart(checkpoints.get(job.job_id), window, window_spend(job, spent, top_ups))
        for job in jobs
    }


def _transient(error: DBAPIError) -> bool:
    """Deadlock detected, serialization failure (PostgreSQL SQLSTATE 40P01, 40001)."""
    return getattr(error.orig, "sqlstate", None) in ("40P01", "40001")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
