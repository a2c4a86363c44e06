"""The job repository: jobs in SQL, returned as frozen domain ``Job`` values.

Every read and write that a caller makes on behalf of a principal takes ``owner_scope``
(``Principal.owner_scope``: an owner id, or ``None`` for operators). The scope is part of
the SQL ``WHERE`` clause, so another owner's job behaves exactly like a missing one.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Update, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.approvals import ToolApprovalPolicy
from cofounder_server.domain.changes import Change
from cofounder_server.domain.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound
from cofounder_server.domain.events import EscalationEvent, EventPayload, JobEvent, JobStatusChanged
from cofounder_server.domain.model import (
    AgentSpec,
    AgentState,
    Job,
    JobFilter,
    JobOutcome,
    JobStatus,
    NewJob,
)
from cofounder_server.store.database import Database
from cofounder_server.store.escalation_rows import withdraw_pending_in
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.idempotency import record_key, replayed_resource_id
from cofounder_server.store.job_creation import JobCreation, JobCreations, Replay, job_row, queued_job
from cofounder_server.store.models import JobRow

CANCEL_JOB = "CancelJob"
"""The idempotency-key operation name of a cancel."""
_CREATE_ATTEMPTS = 3
"""Tries of a batch of creations that lost a key race: the key it lost is stored (a replay)
when the next try reads it."""

_CANCELLABLE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

JobCursor = tuple[datetime, str]
"""Keyset position in a job listing: the ``(create_time, job_id)`` of the last row seen."""


class JobRepository:
    """Create, read, list and change jobs. Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        """``event_log`` takes each change's ``job.status_changed`` event in the change's own
        transaction."""
        self._database = database
        self._event_log = event_log
        self._creations = JobCreations(database)

    async def create(
        self,
        new: NewJob,
        *,
        request_id: str | None,
        fingerprint: str,
        now: datetime,
    ) -> tuple[Job, builtins.list[JobEvent]]:
        """Store ``new`` as a QUEUED job at version 1 with its ``job.status_changed`` event;
        return the job and the events appended (none when nothing was created).

        With a ``request_id``, a retry of the same request (same ``fingerprint``) returns the
        job the first attempt created and no events, even when both attempts race; reusing
        the ``request_id`` for a different request raises ``AlreadyExists``.
        """
        (outcome,) = await self.create_many([JobCreation(new, request_id, fingerprint)], now=now)
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    async def create_many(
        self, creations: Sequence[JobCreation], *, now: datetime
    ) -> builtins.list[tuple[Job, builtins.list[JobEvent]] | DomainError]:
        """:meth:`create` for many requests in one transaction; the outcome of each, in order:
        the job and its events, or the error that refused the request (``AlreadyExists``,
        or ``NotFound`` for a key whose job is gone). A request repeating one earlier in
        ``creations`` gets that request's job. Raises ``Unavailable`` for the whole batch.
        """
        now = _utc(now)
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                committed = await self._creations.commit(creations, now)
                break
            except IntegrityError:
                # On PostgreSQL a concurrent create with the same key can commit between our
                # lookup and our insert; its key row wins, and the next attempt replays it.
                if attempt == _CREATE_ATTEMPTS:
                    raise
        replays = [decision.job_id for decision in committed.decisions if isinstance(decision, Replay)]
        replayed = {job.job_id: job for job in await self.get_many(replays)}
        outcomes: builtins.list[tuple[Job, builtins.list[JobEvent]] | DomainError] = []
        for index, decision in enumerate(committed.decisions):
            if isinstance(decision, AlreadyExists):
                outcomes.append(decision)
            elif isinstance(decision, Replay):
                job = replayed.get(decision.job_id)
                outcomes.append(NotFound("job", decision.job_id) if job is None else (job, []))
            else:
                job, event = committed.created[decision]
                outcomes.append((job, [event] if decision == index else []))
        return outcomes

    async def get(self, job_id: str, *, owner_scope: str | None) -> Job | None:
        """The job, or ``None`` if it does not exist or is outside ``owner_scope``."""
        async with self._database.read() as session:
            row = await session.scalar(_select_job(job_id, owner_scope))
            return None if row is None else job_of(row)

    async def get_many(self, job_ids: Sequence[str]) -> builtins.list[Job]:
        """The jobs of ``job_ids`` that exist, in one read (any owner: for the server's own
        bookkeeping)."""
        if not job_ids:
            return []
        async with self._database.read() as session:
            rows = await session.scalars(select(JobRow).where(JobRow.job_id.in_(job_ids)))
            return [job_of(row) for row in rows]

    async def list(
        self,
        *,
        owner_scope: str | None,
        filter: JobFilter,
        page_size: int,
        after: JobCursor | None,
    ) -> tuple[builtins.list[Job], JobCursor | None]:
        """One page of jobs, newest first, and the cursor of the next page (``None`` at the end).

        Keyset pagination: pass the returned cursor as ``after`` for the next page. Jobs
        created meanwhile never shift a page; they appear on a new listing.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        query = select(JobRow).where(*_owned_by(owner_scope))
        if filter.statuses:
            query = query.where(JobRow.status.in_(sorted(status.value for status in filter.statuses)))
        if filter.project_id:
            query = query.where(JobRow.project_id == filter.project_id)
        if after is not None:
            query = query.where(tuple_(JobRow.create_time, JobRow.job_id) < (_utc(after[0]), after[1]))
        # One row more than the page says whether another page follows.
        query = query.order_by(JobRow.create_time.desc(), JobRow.job_id.desc()).limit(page_size + 1)
        async with self._database.read() as session:
            jobs = [job_of(row) for row in await session.scalars(query)]
        if len(jobs) <= page_size:
            return jobs, None
        page = jobs[:page_size]
        return page, (page[-1].create_time, page[-1].job_id)

    async def cancel(
        self,
        job_id: str,
        *,
        owner_scope: str | None,
        reason: str,
        request_id: str = "",
        fingerprint: str = "",
        now: datetime,
    ) -> Change:
        """Cancel a QUEUED or RUNNING job with its ``job.status_changed`` event, withdrawing
        its pending escalations (their ``agent.escalation_withdrawn`` events come first);
        return the change (no events when this call changed nothing).

        Cancelling a cancelled job changes nothing. Raises ``NotFound`` for a missing job
        or one outside ``owner_scope`` and ``FailedPrecondition("JOB_ALREADY_FINISHED")``
        for a READY or FAILED one. The status check is in the UPDATE itself, so a
        concurrent finish or cancel cannot be overwritten.

        With a ``request_id``, a retry of the same request (same ``fingerprint``) returns the
        job as it stands and changes nothing, even when both attempts race; reusing the
        ``request_id`` for a different request raises ``AlreadyExists``. A refused cancel
        keeps no key.
        """
        now = _utc(now)
        try:
            async with self._database.write() as session:
                current_row = (
                    await session.execute(
                        select(JobRow.status, JobRow.pending_escalations, JobRow.owner_id)
                        .where(JobRow.job_id == job_id, *_owned_by(owner_scope))
                        .with_for_update()
                    )
                ).first()
                if current_row is None:
                    raise NotFound("job", job_id)
                previous, pending, owner_id = current_row
                if request_id and await _cancel_replayed(session, owner_id, request_id, fingerprint):
                    return Change.of(await _current(session, job_id))
                change = await self._cancel_in(session, job_id, previous, pending, reason=reason, now=now)
                if request_id:
                    record_key(
                        session,
                        owner_id=owner_id,
                        operation=CANCEL_JOB,
                        request_id=request_id,
                        fingerprint=fingerprint,
                        resource_id=job_id,
                        now=now,
                    )
                return change
        except IntegrityError:
            if not request_id:
                raise
            # A concurrent attempt with the same request_id committed its key first: replay it.
            async with self._database.read() as session:
                job = await _current(session, job_id)
                if not await _cancel_replayed(session, job.owner_id, request_id, fingerprint):
                    raise
                return Change.of(job)

    async def _cancel_in(
        self,
        session: AsyncSession,
        job_id: str,
        previous: str,
        pending: builtins.list[str],
        *,
        reason: str,
        now: datetime,
    ) -> Change:
        """The cancel of a job locked in ``session`` whose status was ``previous``."""
        withdrawn: builtins.list[EventPayload] = []
        feed: builtins.list[EscalationEvent] = []
        if previous in _CANCELLABLE and pending:
            withdrawn, feed = await withdraw_pending_in(
                session, self._event_log, job_id, reason=f"the job was cancelled: {reason}", now=now
            )
        statement = (
            update(JobRow)
            .where(JobRow.job_id == job_id, JobRow.status.in_(_CANCELLABLE))
            .values(
                status=JobStatus.CANCELLED.value,
                outcome=JobOutcome.CANCELLED.value,
                outcome_detail=reason,
                end_time=now,
            )
        )
        row = await _update_returning(session, statement, now)
        if row is None:
            job = await _current(session, job_id)
            if job.status is not JobStatus.CANCELLED:
                raise FailedPrecondition(
                    "JOB_ALREADY_FINISHED", f"job {job_id!r} already finished as {job.status}"
                )
            return Change.of(job)
        job = job_of(row)
        event = JobStatusChanged(
            status=job.status,
            previous_status=JobStatus(previous),
            outcome=job.outcome,
            detail=job.outcome_detail,
        )
        events = await self._event_log.append_job_events_in(
            session, job.job_id, (*withdrawn, event), now=job.update_time
        )
        return Change.of(job, events, feed=feed)


async def _cancel_replayed(session: AsyncSession, owner_id: str, request_id: str, fingerprint: str) -> bool:
    """Whether this cancel was made before with ``request_id``; ``AlreadyExists`` when the key
    names another request."""
    earlier = await replayed_resource_id(
        session, owner_id=owner_id, operation=CANCEL_JOB, request_id=request_id, fingerprint=fingerprint
    )
    return earlier is not None


async def _current(session: AsyncSession, job_id: str) -> Job:
    """The job as it stands (the caller knows it exists)."""
    row = await session.get(JobRow, job_id, populate_existing=True)
    if row is None:
        raise NotFound("job", job_id)
    return job_of(row)


def _owned_by(owner_scope: str | None) -> tuple[ColumnElement[bool], ...]:
    return () if owner_scope is None else (JobRow.owner_id == owner_scope,)


def _select_job(job_id: str, owner_scope: str | None) -> Select[JobRow]:
    return select(JobRow).where(JobRow.job_id == job_id, *_owned_by(owner_scope))


async def _update_returning(session: AsyncSession, statement: Update, now: datetime) -> JobRow | None:
    """Apply ``statement`` with the bookkeeping every change makes; the new row, if any matched."""
    bumped = statement.values(update_time=now, version=JobRow.version + 1).returning(JobRow)
    # populate_existing: when the row was already loaded in this session (e.g. SELECT ... FOR
    # UPDATE first), the identity map would otherwise hand back that stale object.
    return await session.scalar(
        bumped, execution_options={"synchronize_session": False, "populate_existing": True}
    )


def bumped(statement: Update, now: datetime) -> Update:
    """A Core ``UPDATE`` of jobs with the bookkeeping every change makes (``update_time``,
    ``version``), returning the rows' columns (for :func:`job_of`)."""
    return statement.values(update_time=now, version=JobRow.version + 1).returning(*JobRow.__table__.c)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)


def _new_row(new: NewJob, now: datetime) -> JobRow:
    return JobRow(**job_row(queued_job(new, now)))


def job_of(row: JobRow | Row[Any]) -> Job:
    """The job of a ``jobs`` row: an ORM row, or a Core row of the table's columns."""
    config: dict[str, Any] = dict(row.agent_config)
    return Job(
        job_id=row.job_id,
        owner_id=row.owner_id,
        project_id=row.project_id,
        goal=row.goal,
        daily_budget_microdollars=row.daily_budget_microdollars,
        agent=AgentSpec(
            brain=row.agent_brain,
            model=row.agent_model,
            config=config,
            tool_approval=ToolApprovalPolicy.from_json(row.tool_approval),
        ),
        labels={str(key): str(value) for key, value in row.labels.items()},
        status=JobStatus(row.status),
        outcome=None if row.outcome is None else JobOutcome(row.outcome),
        outcome_detail=row.outcome_detail,
        agent_state=None if row.agent_state is None else AgentState(row.agent_state),
        wake_at=row.wake_at,
        create_time=row.create_time,
        update_time=row.update_time,
        end_time=row.end_time,
        version=row.version,
        pending_escalation_ids=tuple(row.pending_escalations or ()),
        approved_tools=tuple(row.approved_tools or ()),
    )
