"""Runs of jobs in SQL: claims, and the job transitions the executor and WakeAgent
make, each committed together with its events and returned as a :class:`Change`.

Every transition is a conditional UPDATE on the job row, so a cancel, a WakeAgent or another
replica that got there first is never overwritten: the loser sees ``None`` and re-reads.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, exists, or_, select, update
from sqlalchemy.exc import IntegrityError

from cofounder_server import observability
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from cofounder_server.domain.events import (
    AgentWaking,
    EscalationEvent,
    EventPayload,
    JobEvent,
    JobStatusChanged,
    WakeReason,
)
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus
from cofounder_server.store.checkpoints import RunStart, starts_in
from cofounder_server.store.database import Database
from cofounder_server.store.escalation_rows import withdraw_pending_in
from cofounder_server.store.events import EventLogRepository, Horizon, append_job_events
from cofounder_server.store.jobs import _select_job, _update_returning, bumped, job_of
from cofounder_server.store.ledger import budget_in
from cofounder_server.store.models import BudgetAdjustmentRow, JobRow, RunnerRow

_RUNNING = JobStatus.RUNNING.value
_QUEUED = JobStatus.QUEUED.value
_SLEEPING = AgentState.SLEEPING.value


@dataclass(frozen=True)
class Resumed:
    """A parked agent to run again: its job, what its run starts from, and the wake recorded
    now (``None`` when something else woke it in SQL before: WakeAgent, an answer)."""

    job: Job
    start: RunStart
    change: Change | None


@dataclass(frozen=True)
class StillParked:
    """A parked agent that SQL still shows parked and that is not this executor's to wake
    (waiting for a person): it goes back to the parking lot as it was."""

    agent_state: AgentState
    wake_at: datetime | None


class RunRepository:
    """Claims and transitions of running jobs (the runner leases themselves are
    :class:`~cofounder_server.store.runners.RunnerLeases`). Raises domain errors only
    (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log

    # --- claims -------------------------------------------------------------------------

    async def orphaned(
        self, runner_id: str, *, parked: Collection[AgentState], expired: Sequence[str], limit: int
    ) -> list[str]:
        """Ids of running jobs to take over as awake agents, oldest first: those whose agent is
        not ``parked`` and that no live runner holds (unowned, or of an ``expired`` runner).
        Queued jobs are taken with :meth:`claim_next_queued`, this runner's own jobs with
        :meth:`RunnerLeases.jobs_of`."""
        if limit < 1:
            return []
        awake = or_(
            JobRow.agent_state.is_(None), JobRow.agent_state.not_in([state.value for state in parked])
        )
        query = (
            select(JobRow.job_id)
            .where(JobRow.status == _RUNNING, awake, _free(runner_id, expired))
            .order_by(JobRow.create_time, JobRow.job_id)
            .limit(limit)
        )
        async with self._database.read() as session:
            return [str(job_id) for job_id in await session.scalars(query)]

    async def any_queued(self) -> bool:
        """Whether any job is queued (one indexed read: a claim round with nothing to claim
        takes no write transaction)."""
        async with self._database.read() as session:
            found = await session.scalar(select(JobRow.job_id).where(JobRow.status == _QUEUED).limit(1))
        return found is not None

    async def claim_next_queued(self, runner_id: str, *, limit: int, now: datetime) -> list[Change]:
        """Take the ``limit`` oldest queued jobs in one transaction: each becomes RUNNING on
        ``runner_id`` with its working agent and its ``job.status_changed`` event. The changes
        come oldest first; on PostgreSQL a row another claimer holds is skipped, not waited
        for, so replicas claiming at once take different jobs."""
        if limit < 1:
            return []
        return await self._database.transact(
            _claim_next_queued, limit, runner_id, _utc(now), self._event_log.prune_horizon
        )

    async def resume_parked(
        self,
        parked: Sequence[tuple[str, AgentState, WakeReason]],
        runner_id: str,
        *,
        window: datetime,
        now: datetime,
    ) -> dict[str, Resumed | StillParked]:
        """Resume parked agents of ``runner_id`` in one transaction: each ``(job_id, parked
        state, why it wakes)`` that SQL still shows sleeping is woken (``agent.waking``); one
        woken before is taken as it is; one still waiting for a person stays parked. Jobs no
        longer this runner's running ones (cancelled, finished, taken over) are left out.
        What the resumed runs start from is read in the same transaction."""
        if not parked:
            return {}
        return await self._database.transact(
            _resume_parked,
            list(parked),
            runner_id,
            window=window,
            now=_utc(now),
            horizon=self._event_log.prune_horizon,
        )

    async def claim(self, job_id: str, runner_id: str, *, now: datetime) -> Change | None:
        """Take the job if it is still claimable (queued, unowned, this runner's own, or its
        runner's lease expired); a queued job becomes RUNNING (with its event)."""
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
            condition = [JobRow.job_id == job_id, JobRow.status == current]
            if current == _RUNNING:
                expired = select(RunnerRow.runner_id).where(RunnerRow.lease_expires_at < now)
                condition.append(
                    or_(
                        JobRow.runner_id.is_(None),
                        JobRow.runner_id == runner_id,
                        JobRow.runner_id.in_(expired.scalar_subquery()),
                        ~exists().where(RunnerRow.runner_id == JobRow.runner_id),
                    )
                )
                # A claim is bookkeeping, not a change of the job: no version bump.
                row = await session.scalar(
                    update(JobRow).where(*condition).values(runner_id=runner_id).returning(JobRow),
                    execution_options={"synchronize_session": False},
                )
                if row is not None and previous_runner not in (None, runner_id):
                    observability.metrics.lease_takeovers.inc()
                return None if row is None else Change.of(job_of(row))
            values = {"runner_id": runner_id, "status": _RUNNING, "agent_state": AgentState.WORKING.value}
            row = await _update_returning(session, update(JobRow).where(*condition).values(**values), now)
            if row is None:
                return None
            job = job_of(row)
            event = JobStatusChanged(status=JobStatus.RUNNING, previous_status=JobStatus.QUEUED)
            events = await self._event_log.append_job_events_in(session, job_id, (event,), now=now)
            return Change.of(job, events)

    async def get(self, job_id: str) -> Job | None:
        """The job (unscoped)."""
        async with self._database.read() as session:
            row = await session.scalar(_select_job(job_id, None))
            return None if row is None else job_of(row)

    async def announce(
        self, job_id: str, runner_id: str, payloads: Sequence[EventPayload], *, now: datetime
    ) -> list[JobEvent] | None:
        """Append events that change nothing else (a retry announced) to a running job this
        runner holds; ``None`` if it is not (cancelled meanwhile): nothing may follow a job's
        terminal event, which ends every watch of it."""
        async with self._database.write() as session:
            held = await session.scalar(
                select(JobRow.job_id)
                .where(JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
                .with_for_update()
            )
            if held is None:
                return None
            (events,) = await self._event_log.append_many_in(
                session, [(job_id, payloads)], now=now, fleet=False
            )
            return events

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
            )
        )
        change = JobStatusChanged(
            status=status, previous_status=JobStatus.RUNNING, outcome=outcome, detail=detail
        )
        async with self._database.write() as session:
            pending = await session.scalar(
                select(JobRow.pending_escalations)
                .where(JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
                .with_for_update()
            )
            if pending is None:
                return None
            withdrawn: list[EventPayload] = []
            feed: list[EscalationEvent] = []
            if pending:  # the job's list names every pending escalation: none, nothing to withdraw
                withdrawn, feed = await withdraw_pending_in(
                    session, self._event_log, job_id, reason=f"the job ended ({outcome.value})", now=now
                )
            row = await _update_returning(session, statement, now)
            if row is None:
                return None
            stored = await self._event_log.append_job_events_in(
                session, job_id, [*withdrawn, *events, change], now=now
            )
            return Change.of(job_of(row), stored, feed=feed)

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
                        return Change.of(job_of(row))
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
                job = job_of(updated)
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
            return Change.of(job_of(row), stored)


def _claim_next_queued(
    connection: Connection, limit: int, runner_id: str, now: datetime, horizon: Horizon
) -> list[Change]:
    candidates = (
        select(JobRow.job_id)
        .where(JobRow.status == _QUEUED)
        .order_by(JobRow.create_time, JobRow.job_id)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    oldest = [str(job_id) for job_id in connection.scalars(candidates)]
    if not oldest:
        return []
    statement = (
        update(JobRow)
        .where(JobRow.job_id.in_(oldest), JobRow.status == _QUEUED)
        .values(runner_id=runner_id, status=_RUNNING, agent_state=AgentState.WORKING.value)
    )
    claimed = {job.job_id: job for job in map(job_of, connection.execute(bumped(statement, now)))}
    jobs = [claimed[job_id] for job_id in oldest if job_id in claimed]
    started = (JobStatusChanged(status=JobStatus.RUNNING, previous_status=JobStatus.QUEUED),)
    stored = append_job_events(connection, [(job.job_id, started) for job in jobs], now=now, horizon=horizon)
    return [Change.of(job, events) for job, events in zip(jobs, stored, strict=True)]


def _resume_parked(
    connection: Connection,
    parked: list[tuple[str, AgentState, WakeReason]],
    runner_id: str,
    *,
    window: datetime,
    now: datetime,
    horizon: Horizon,
) -> dict[str, Resumed | StillParked]:
    held = {
        str(job_id): (agent_state, wake_at)
        for job_id, agent_state, wake_at in connection.execute(
            select(JobRow.job_id, JobRow.agent_state, JobRow.wake_at).where(
                JobRow.job_id.in_([job_id for job_id, _, _ in parked]),
                JobRow.status == _RUNNING,
                JobRow.runner_id == runner_id,
            )
        )
    }
    outcome: dict[str, Resumed | StillParked] = {}
    to_wake: defaultdict[WakeReason, list[str]] = defaultdict(list)
    woken_before: list[str] = []
    for job_id, state, reason in parked:
        if job_id not in held:
            continue
        current = held[job_id][0]
        if current != state.value:
            woken_before.append(job_id)
        elif state is AgentState.SLEEPING:
            to_wake[reason].append(job_id)
        else:
            outcome[job_id] = StillParked(state, held[job_id][1])
    jobs: dict[str, Job] = {}
    woken: list[tuple[Job, WakeReason]] = []
    for reason, job_ids in to_wake.items():
        statement = (
            update(JobRow)
            .where(JobRow.job_id.in_(job_ids), JobRow.status == _RUNNING, JobRow.agent_state == _SLEEPING)
            .values(agent_state=AgentState.WORKING.value, wake_at=None)
        )
        for row in connection.execute(bumped(statement, now)):
            job = job_of(row)
            jobs[job.job_id] = job
            woken.append((job, reason))
    if woken_before:
        for row in connection.execute(select(*JobRow.__table__.c).where(JobRow.job_id.in_(woken_before))):
            job = job_of(row)
            if job.agent_state is AgentState.SLEEPING or job.agent_state is AgentState.WAITING_FOR_INPUT:
                # Parked again meanwhile, in another state: back to the lot as SQL has it.
                outcome[job.job_id] = StillParked(job.agent_state, job.wake_at)
            else:
                jobs[job.job_id] = job
    stored = (
        append_job_events(
            connection,
            [(job.job_id, (AgentWaking(reason=reason),)) for job, reason in woken],
            now=now,
            horizon=horizon,
        )
        if woken
        else []
    )
    changes = {job.job_id: Change.of(job, events) for (job, _), events in zip(woken, stored, strict=True)}
    starts = starts_in(connection, list(jobs.values()), window)
    for job_id, job in jobs.items():
        outcome[job_id] = Resumed(job, starts[job_id], changes.get(job_id))
    return outcome


def _free(runner_id: str, expired: Sequence[str]) -> ColumnElement[bool]:
    """Running jobs no live runner holds: unowned, or of an expired runner other than this one."""
    others = [runner for runner in expired if runner != runner_id]
    free: ColumnElement[bool] = JobRow.runner_id.is_(None)
    return or_(free, JobRow.runner_id.in_(others)) if others else free


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
