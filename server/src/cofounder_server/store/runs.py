"""Runs of jobs in SQL: claims and leases, and the job transitions the executor and WakeAgent
make, each committed together with its events and returned as a :class:`Change`.

Every transition is a conditional UPDATE on the job row, so a cancel, a WakeAgent or another
replica that got there first is never overwritten: the loser sees ``None`` and re-reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from cofounder_server import observability
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from cofounder_server.domain.events import AgentWaking, EventPayload, JobStatusChanged, WakeReason
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.escalation_rows import withdraw_pending_in
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import _select_job, _to_job, _update_returning
from cofounder_server.store.ledger import budget_in
from cofounder_server.store.models import BudgetAdjustmentRow, JobRow

_RUNNING = JobStatus.RUNNING.value
_SLEEPING = AgentState.SLEEPING.value
_PARKED = (_SLEEPING, AgentState.WAITING_FOR_INPUT.value)


class RunRepository:
    """Claims, leases and transitions of running jobs. Raises domain errors only
    (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log

    # --- leases -------------------------------------------------------------------------

    async def claimable(
        self, runner_id: str, *, now: datetime, sleeping: bool, exclude: Sequence[str], limit: int
    ) -> list[str]:
        """Ids of jobs this runner may claim, oldest first: queued jobs (unless ``sleeping``),
        and running jobs that are this runner's, unowned, or whose lease expired; only
        parked agents (asleep, or waiting for a person) when ``sleeping``, else only awake
        ones."""
        if limit < 1:
            return []
        free = or_(
            JobRow.runner_id.is_(None), JobRow.runner_id == runner_id, JobRow.lease_expires_at < _utc(now)
        )
        agent_sleeping = JobRow.agent_state.in_(_PARKED)
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
        async with self._database.read() as session:
            return [str(job_id) for job_id in await session.scalars(query)]

    async def claim(
        self, job_id: str, runner_id: str, *, now: datetime, lease_until: datetime
    ) -> Change | None:
        """Take the job if it is still claimable; a queued job becomes RUNNING (with its event)."""
        now = _utc(now)
        async with self._database.write() as session:
            found = (
                await session.execute(
                    select(JobRow.status, JobRow.runner_id).where(JobRow.job_id == job_id).with_for_update()
                )
            ).one_or_none()
            current, previous_runner = found if found is not None else (None, None)
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
                if row is not None and previous_runner not in (None, runner_id):
                    observability.metrics.lease_takeovers.inc()
                return None if row is None else Change.of(_to_job(row))
            values.update(status=_RUNNING, agent_state=AgentState.WORKING.value)
            row = await _update_returning(session, update(JobRow).where(*condition).values(**values), now)
            if row is None:
                return None
            job = _to_job(row)
            event = JobStatusChanged(status=JobStatus.RUNNING, previous_status=JobStatus.QUEUED)
            events = await self._event_log.append_job_events_in(session, job_id, (event,), now=now)
            return Change.of(job, events)

    async def renew(
        self, runner_id: str, job_ids: Sequence[str], *, now: datetime, lease_until: datetime
    ) -> set[str]:
        """Extend this runner's leases; return the ids among ``job_ids`` it no longer holds
        (cancelled, finished, or taken over)."""
        if not job_ids:
            return set()
        async with self._database.write() as session:
            mine = select(JobRow.job_id).where(JobRow.runner_id == runner_id, JobRow.status == _RUNNING)
            if self._database.dialect_name == "postgresql":
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
        async with self._database.write() as session:
            if self._database.dialect_name == "postgresql":
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

    async def get(self, job_id: str) -> Job | None:
        """The job (unscoped)."""
        async with self._database.read() as session:
            row = await session.scalar(_select_job(job_id, None))
            return None if row is None else _to_job(row)

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
    ) -> Change | None:
        """End a running job this runner holds, withdrawing its pending escalations (their
        ``agent.escalation_withdrawn`` events come first); ``None`` if it is not (cancelled
        meanwhile)."""
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
        async with self._database.write() as session:
            held = await session.scalar(
                select(JobRow.job_id)
                .where(JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
                .with_for_update()
            )
            if held is None:
                return None
            withdrawn, feed = await withdraw_pending_in(
                session, self._event_log, job_id, reason=f"the job ended ({outcome.value})", now=now
            )
            row = await _update_returning(session, statement, now)
            if row is None:
                return None
            stored = await self._event_log.append_job_events_in(
                session, job_id, [*withdrawn, *events, change], now=now
            )
            return Change.of(_to_job(row), stored, feed=feed)

    async def set_agent_state(
        self,
        job_id: str,
        *,
        state: AgentState,
        wake_at: datetime | None,
        events: Sequence[EventPayload],
        now: datetime,
        only_from: AgentState | None = None,
    ) -> Change | None:
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
    ) -> Change:
        """WakeAgent: record the top-up for ``window`` and wake the sleeping agent, in one
        transaction with its ``agent.waking`` event; with a top-up, the change carries the
        window's spend and raised budget.

        A retried ``request_id`` (same top-up) changes nothing (no events), whatever its
        agent does now; the same id with another top-up is ``AlreadyExists``. Raises
        ``NotFound`` and ``FailedPrecondition("AGENT_NOT_SLEEPING")``.
        """
        now = _utc(now)
        try:
            async with self._database.write() as session:
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
                        return Change.of(_to_job(row))
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
                events = await self._event_log.append_job_events_in(session, job_id, (event,), now=now)
                spend = None
                if top_up:
                    spent, top_ups = await budget_in(session, job_id, window)
                    spend = Spend(spent, job.daily_budget_microdollars + top_ups)
                return Change.of(job, events, spend=spend)
        except IntegrityError:
            # A concurrent retry of the same request_id committed first: replay it.
            if not request_id:
                raise
            return await self.wake(
                job_id, owner_scope=owner_scope, request_id=request_id, top_up=top_up, window=window, now=now
            )

    async def _transition(
        self, statement: Any, job_id: str, events: Sequence[EventPayload], now: datetime
    ) -> Change | None:
        async with self._database.write() as session:
            row = await _update_returning(session, statement, now)
            if row is None:
                return None
            stored = (
                await self._event_log.append_job_events_in(session, job_id, events, now=now) if events else []
            )
            return Change.of(_to_job(row), stored)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
