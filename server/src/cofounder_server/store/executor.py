"""What the executor keeps in SQL: leases, checkpoints, the usage ledger and budget top-ups,
and the job transitions it makes (each committed together with its events).

Every transition is a conditional UPDATE on the job row, so a cancel, a WakeAgent or another
replica that got there first is never overwritten: the loser sees ``None`` and re-reads.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from cofounder_server.domain.events import (
    AgentWaking,
    EventPayload,
    JobEvent,
    JobStatusChanged,
    WakeReason,
)
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.iterations import CommittedBatch, IterationRecord
from cofounder_server.store.jobs import _select_job, _to_job, _update_returning
from cofounder_server.store.models import (
    BudgetAdjustmentRow,
    CheckpointMessageRow,
    CheckpointRow,
    JobRow,
    UsageLedgerRow,
    table_of,
)
from cofounder_server.store.sqlite_commit import SqliteGroupCommit

_RUNNING = JobStatus.RUNNING.value
_SLEEPING = AgentState.SLEEPING.value


@dataclass(frozen=True)
class Checkpoint:
    """A job's loop after its last completed iteration."""

    iteration: int
    messages: list[dict[str, Any]]
    state: dict[str, Any]


@dataclass(frozen=True)
class Changed:
    """A committed job change and the events committed with it (to fan out)."""

    job: Job
    events: list[JobEvent]


class ExecutorStore:
    """The executor's SQL. Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self.database = database
        self.event_log = event_log
        self._sqlite: SqliteGroupCommit | None = None

    # --- leases -------------------------------------------------------------------------

    async def claimable(
        self, runner_id: str, *, now: datetime, sleeping: bool, exclude: Sequence[str], limit: int
    ) -> list[str]:
        """Ids of jobs this runner may claim, oldest first: queued jobs (unless ``sleeping``),
        and running jobs that are this runner's, unowned, or whose lease expired; only
        sleeping agents when ``sleeping``, else only awake ones."""
        if limit < 1:
            return []
        free = or_(
            JobRow.runner_id.is_(None), JobRow.runner_id == runner_id, JobRow.lease_expires_at < _utc(now)
        )
        agent_sleeping = JobRow.agent_state == _SLEEPING
        if sleeping:
            condition = and_(JobRow.status == _RUNNING, agent_sleeping, free)
        else:
            awake = or_(JobRow.agent_state.is_(None), ~agent_sleeping)
            condition = or_(
                JobRow.status == JobStatus.QUEUED.value, and_(JobRow.status == _RUNNING, awake, free)
            )
        query = select(JobRow.job_id).where(condition)
        if exclude:
            query = query.where(JobRow.job_id.not_in(list(exclude)))
        query = query.order_by(JobRow.create_time, JobRow.job_id).limit(limit)
        async with self.database.read() as session:
            return [str(job_id) for job_id in await session.scalars(query)]

    async def claim(
        self, job_id: str, runner_id: str, *, now: datetime, lease_until: datetime
    ) -> Changed | None:
        """Take the job if it is still claimable; a queued job becomes RUNNING (with its event)."""
        now = _utc(now)
        async with self.database.write() as session:
            current = await session.scalar(
                select(JobRow.status).where(JobRow.job_id == job_id).with_for_update()
            )
            if current not in (JobStatus.QUEUED.value, _RUNNING):
                return None
            values: dict[str, Any] = {"runner_id": runner_id, "lease_expires_at": _utc(lease_until)}
            condition = [JobRow.job_id == job_id, JobRow.status == current]
            if current == _RUNNING:
                condition.append(
                    or_(
                        JobRow.runner_id.is_(None),
                        JobRow.runner_id == runner_id,
                        JobRow.lease_expires_at < now,
                    )
                )
                # A lease is bookkeeping, not a change of the job: no version bump.
                row = await session.scalar(
                    update(JobRow).where(*condition).values(**values).returning(JobRow),
                    execution_options={"synchronize_session": False},
                )
                return None if row is None else Changed(_to_job(row), [])
            values.update(status=_RUNNING, agent_state=AgentState.WORKING.value)
            row = await _update_returning(session, update(JobRow).where(*condition).values(**values), now)
            if row is None:
                return None
            job = _to_job(row)
            event = JobStatusChanged(status=JobStatus.RUNNING, previous_status=JobStatus.QUEUED)
            events = await self.event_log.append_job_events_in(session, job_id, (event,), now=now)
            return Changed(job, events)

    async def renew(
        self, runner_id: str, job_ids: Sequence[str], *, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Extend this runner's leases; return the ids among ``job_ids`` it no longer holds
        (cancelled, finished, or taken over)."""
        if not job_ids:
            return set()
        async with self.database.write() as session:
            mine = select(JobRow.job_id).where(JobRow.runner_id == runner_id, JobRow.status == _RUNNING)
            if self.database.dialect_name == "postgresql":
                # Row locks in job_id order, as the iteration writer takes them: no deadlock.
                ids = list(await session.scalars(mine.order_by(JobRow.job_id).with_for_update()))
                condition: ColumnElement[bool] = JobRow.job_id.in_(ids)
            else:
                condition = and_(JobRow.runner_id == runner_id, JobRow.status == _RUNNING)
            # One statement renews and says which are held: SQLite's write lock is then held
            # across fewer trips through a busy event loop.
            held = await session.scalars(
                update(JobRow)
                .where(condition)
                .values(lease_expires_at=_utc(lease_until))
                .returning(JobRow.job_id),
                execution_options={"synchronize_session": False},
            )
            return set(job_ids) - {str(job_id) for job_id in held}

    async def release(self, runner_id: str, job_ids: Sequence[str]) -> None:
        """Give up leases, so any replica may claim the jobs at once."""
        if not job_ids:
            return
        async with self.database.write() as session:
            if self.database.dialect_name == "postgresql":
                await session.execute(
                    select(JobRow.job_id)
                    .where(JobRow.job_id.in_(sorted(job_ids)))
                    .order_by(JobRow.job_id)
                    .with_for_update()
                )
            await session.execute(
                update(JobRow)
                .where(JobRow.runner_id == runner_id, JobRow.job_id.in_(list(job_ids)))
                .values(runner_id=None, lease_expires_at=None),
                execution_options={"synchronize_session": False},
            )

    # --- reading a job's loop -----------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        """The job (unscoped)."""
        async with self.database.read() as session:
            row = await session.scalar(_select_job(job_id, None))
            return None if row is None else _to_job(row)

    async def checkpoint(self, job_id: str) -> Checkpoint | None:
        """The last checkpoint, or ``None`` before the first iteration completed."""
        async with self.database.read() as session:
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

    async def budget_of(self, job_id: str, window: datetime) -> tuple[int, int]:
        """``(spent, top_ups)`` of ``window``."""
        async with self.database.read() as session:
            spent = await session.scalar(
                select(func.coalesce(func.sum(UsageLedgerRow.cost_microdollars), 0)).where(
                    UsageLedgerRow.job_id == job_id, UsageLedgerRow.window_start == _utc(window)
                )
            )
            top_ups = await session.scalar(
                select(func.coalesce(func.sum(BudgetAdjustmentRow.amount_microdollars), 0)).where(
                    BudgetAdjustmentRow.job_id == job_id, BudgetAdjustmentRow.window_start == _utc(window)
                )
            )
            return int(spent or 0), int(top_ups or 0)

    # --- transitions --------------------------------------------------------------------

    async def finish(
        self,
        job_id: str,
        runner_id: str,
        *,
        status: JobStatus,
        outcome: JobOutcome,
        detail: str,
        agent_state: AgentState,
        events: Sequence[EventPayload],
        now: datetime,
    ) -> Changed | None:
        """End a running job this runner holds; ``None`` if it is not (cancelled meanwhile)."""
        now = _utc(now)
        statement = (
            update(JobRow)
            .where(JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
            .values(
                status=status.value,
                outcome=outcome.value,
                outcome_detail=detail,
                agent_state=agent_state.value,
                wake_at=None,
                end_time=now,
                runner_id=None,
                lease_expires_at=None,
            )
        )
        change = JobStatusChanged(
            status=status, previous_status=JobStatus.RUNNING, outcome=outcome, detail=detail
        )
        return await self._transition(statement, job_id, [*events, change], now)

    async def set_agent_state(
        self,
        job_id: str,
        *,
        state: AgentState,
        wake_at: datetime | None,
        events: Sequence[EventPayload],
        now: datetime,
        only_from: AgentState | None = None,
    ) -> Changed | None:
        """Record the running agent's state and wake time with ``events``; ``None`` if the job
        is not running (or its agent is not in ``only_from``)."""
        condition = [JobRow.job_id == job_id, JobRow.status == _RUNNING]
        if only_from is not None:
            condition.append(JobRow.agent_state == only_from.value)
        statement = (
            update(JobRow)
            .where(*condition)
            .values(agent_state=state.value, wake_at=None if wake_at is None else _utc(wake_at))
        )
        return await self._transition(statement, job_id, events, _utc(now))

    async def wake(
        self,
        job_id: str,
        *,
        owner_scope: str | None,
        request_id: str,
        top_up: int,
        window: datetime,
        now: datetime,
    ) -> tuple[Job, list[JobEvent]]:
        """WakeAgent: record the top-up for ``window`` and wake the sleeping agent, in one
        transaction with its ``agent.waking`` event.

        A retried ``request_id`` (same top-up) returns the job and no events, whatever its
        agent does now; the same id with another top-up is ``AlreadyExists``. Raises
        ``NotFound`` and ``FailedPrecondition("AGENT_NOT_SLEEPING")``.
        """
        now = _utc(now)
        try:
            async with self.database.write() as session:
                row = await session.scalar(_select_job(job_id, owner_scope).with_for_update())
                if row is None:
                    raise NotFound("job", job_id)
                if request_id:
                    earlier = await session.get(BudgetAdjustmentRow, (job_id, request_id))
                    if earlier is not None:
                        if earlier.amount_microdollars != top_up:
                            raise AlreadyExists(
                                "REQUEST_ID_REUSED",
                                f"request_id {request_id!r} was already used with another top-up",
                            )
                        return _to_job(row), []
                if row.status != _RUNNING or row.agent_state != _SLEEPING:
                    raise FailedPrecondition(
                        "AGENT_NOT_SLEEPING", f"the agent of job {job_id!r} is not sleeping"
                    )
                if top_up or request_id:
                    session.add(
                        BudgetAdjustmentRow(
                            job_id=job_id,
                            request_id=request_id or f"anonymous:{uuid.uuid4()}",
                            window_start=_utc(window),
                            amount_microdollars=top_up,
                            time=now,
                        )
                    )
                statement = (
                    update(JobRow)
                    .where(
                        JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.agent_state == _SLEEPING
                    )
                    .values(agent_state=AgentState.WORKING.value, wake_at=None)
                )
                updated = await _update_returning(session, statement, now)
                assert updated is not None  # the row is locked and was checked above
                job = _to_job(updated)
                event = AgentWaking(reason=WakeReason.REQUESTED, top_up_microdollars=top_up)
                events = await self.event_log.append_job_events_in(session, job_id, (event,), now=now)
                return job, events
        except IntegrityError:
            # A concurrent retry of the same request_id committed first: replay it.
            if not request_id:
                raise
            return await self.wake(
                job_id, owner_scope=owner_scope, request_id=request_id, top_up=top_up, window=window, now=now
            )

    async def _transition(
        self, statement: Any, job_id: str, events: Sequence[EventPayload], now: datetime
    ) -> Changed | None:
        async with self.database.write() as session:
            row = await _update_returning(session, statement, now)
            if row is None:
                return None
            stored = (
                await self.event_log.append_job_events_in(session, job_id, events, now=now) if events else []
            )
            return Changed(_to_job(row), stored)

    # --- the iteration write path (group commit) ----------------------------------------

    async def commit_iterations(
        self, records: Sequence[IterationRecord], *, runner_id: str, now: datetime
    ) -> CommittedBatch:
        """Make a batch of iterations durable in one transaction (the group commit).

        The jobs are re-read in the transaction: an iteration's ledger row is recorded while
        its job is still ``runner_id``'s (the model call was paid for), the rest (messages,
        checkpoint, events) only while the job is also still RUNNING; those jobs come back
        as ``accepted``, with the stored events. Raises ``Unavailable`` when SQL cannot be
        reached, and SQLAlchemy's ``IntegrityError`` when an iteration was recorded before
        (by another runner): then nothing of the batch is stored.
        """
        if self.database.dialect_name == "sqlite":
            if self._sqlite is None:
                self._sqlite = SqliteGroupCommit(self.database, self.event_log.prune_horizon)
            return await self._sqlite.commit(records, runner_id=runner_id, now=now)
        async with self.database.write() as session:
            jobs = await self._lock_jobs(session, [record.job_id for record in records])
            ours = {job_id for job_id, (_, runner) in jobs.items() if runner == runner_id}
            accepted = {job_id for job_id in ours if jobs[job_id][0] == _RUNNING}
            ledger = [r.ledger for r in records if r.ledger is not None and r.job_id in ours]
            if ledger:
                await session.execute(table_of(UsageLedgerRow).insert(), ledger)
            mine = [record for record in records if record.job_id in accepted]
            messages = [message for record in mine for message in record.messages]
            if messages:
                await session.execute(table_of(CheckpointMessageRow).insert(), messages)
            if mine:
                await session.execute(_upsert_checkpoint(), [record.head for record in mine])
            with_events = [(record.job_id, record.events) for record in mine if record.events]
            stored = await self.event_log.append_many_in(session, with_events, now=now) if with_events else []
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


_CHECKPOINT_HEAD = ("iteration", "message_count", "state", "update_time")


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


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
