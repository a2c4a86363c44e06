"""The escalation repository: escalations in SQL, returned as frozen domain ``Escalation`` values.

Every change of an escalation commits in one transaction with what it implies: its entry in
the escalation feed, the job's events and, where the agent's state changes, the job row.
Changes are conditional UPDATEs on the escalation's state (``WHERE state = 'pending'``), so
of concurrent resolves, deadline firings and withdrawals on any number of replicas exactly
one applies: PostgreSQL re-checks the condition after waiting for the row lock, and SQLite
serialises writers.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Update, case, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.approvals import APPROVE_FOR_JOB
from cofounder_server.domain.changes import Change
from cofounder_server.domain.errors import FailedPrecondition, NotFound
from cofounder_server.domain.escalations import (
    ALREADY_RESOLVED,
    DecisionSource,
    Escalation,
    EscalationStatus,
    Resolution,
    check_resolution,
    deadline_outcome,
    delivered_text,
)
from cofounder_server.domain.events import (
    AgentEscalationRaised,
    AgentEscalationResolved,
    AgentWaitingForInput,
    EscalationEvent,
    EscalationEventKind,
    EventPayload,
    JobEvent,
)
from cofounder_server.domain.model import AgentState, Job, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.escalation_rows import new_row, to_escalation
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.idempotency import record_key, replayed_resource_id
from cofounder_server.store.jobs import _update_returning, job_of
from cofounder_server.store.models import EscalationRow, JobRow
from cofounder_server.store.tool_executions import (
    approval_events,
    approval_requested,
    approved_execution,
)

RESOLVE_ESCALATION = "ResolveEscalation"
"""The idempotency-key operation name of a resolve."""

_PENDING = EscalationStatus.PENDING.value
_RUNNING = JobStatus.RUNNING.value

EscalationCursor = tuple[datetime, str]
"""Keyset position in a listing: the ``(create_time, escalation_id)`` of the last row seen."""


@dataclass(frozen=True)
class Decision:
    """A resolve made through the API: the option, the guidance and who chose."""

    decision: str
    guidance: str
    resolved_by: str
    source: DecisionSource
    via_service: str = ""
    answer: str = ""
    """The free-text or JSON answer (for questions that take one)."""
    arguments_digest: str = ""
    """The digest of the tool call an approval approves."""
    edited_arguments_json: str = ""
    """The arguments an approval approves instead of the agent's."""


@dataclass(frozen=True)
class Resolved:
    """The outcome of a resolve: the escalation as it stands, its change (``None`` when a
    retried ``request_id`` replayed an earlier resolve) and the job as it stands."""

    escalation: Escalation
    change: Change | None
    job: Job | None


class EscalationRepository:
    """Raise, resolve, expire, withdraw, deliver and read escalations. Raises domain errors
    only (``Unavailable`` included)."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log

    # --- raising --------------------------------------------------------------------------

    async def raise_for(
        self,
        job_id: str,
        runner_id: str,
        escalations: Sequence[Escalation],
        *,
        before: Sequence[EventPayload] = (),
        now: datetime,
    ) -> Change | None:
        """Record ``escalations`` of the job this runner runs, and set its agent waiting for
        input: ``before`` (e.g. ``agent.retrying``), then ``agent.escalation_raised`` and
        ``agent.waiting_for_input`` per escalation, in one transaction. The change's feed
        holds the escalations stored now.

        Raising again after a restart is harmless: escalations already stored (by id) are
        neither stored nor announced twice, and when all of them are decided nothing changes.
        ``None`` when the job is not running here.
        """
        now = _utc(now)
        async with self._database.write() as session:
            held = (JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
            pending = await session.scalar(select(JobRow.pending_escalations).where(*held).with_for_update())
            if pending is None:
                return None
            ids = [e.escalation_id for e in escalations]
            rows = await session.execute(
                select(EscalationRow.escalation_id, EscalationRow.state).where(
                    EscalationRow.escalation_id.in_(ids)
                )
            )
            known = {str(escalation_id): str(state) for escalation_id, state in rows.all()}
            fresh = [e for e in escalations if e.escalation_id not in known]
            if not fresh and _PENDING not in known.values():
                return Change(job_id, None)  # all decided already: the agent need not wait
            statement = (
                update(JobRow)
                .where(*held)
                .values(
                    agent_state=AgentState.WAITING_FOR_INPUT.value,
                    wake_at=None,
                    pending_escalations=[*pending, *(e.escalation_id for e in fresh)],
                )
            )
            job_row = await _update_returning(session, statement, now)
            if job_row is None:
                return None
            feed: list[EscalationEvent] = []
            payloads: list[EventPayload] = list(before)
            for escalation in fresh:
                session.add(new_row(escalation))
                feed.append(
                    await self._event_log.append_escalation_event_in(
                        session, EscalationEventKind.RAISED, escalation, now=now
                    )
                )
                payloads.append(AgentEscalationRaised(escalation))
                payloads += approval_requested(escalation)
                payloads.append(AgentWaitingForInput(escalation.escalation_id))
            events = await self._events_in(session, job_id, payloads, now)
            return Change.of(job_of(job_row), events, feed=feed)

    async def count_for_job(self, job_id: str) -> int:
        """How many escalations the job has raised."""
        async with self._database.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(EscalationRow).where(EscalationRow.job_id == job_id)
            )
            return int(count or 0)

    # --- deciding -------------------------------------------------------------------------

    async def resolve(
        self,
        escalation_id: str,
        decision: Decision,
        *,
        owner_scope: str | None,
        request_id: str,
        fingerprint: str,
        now: datetime,
    ) -> Resolved:
        """Decide a pending escalation with one of its options.

        Raises ``NotFound`` (missing or outside ``owner_scope``), ``InvalidArgument`` (not an
        option value; nothing is recorded) and ``FailedPrecondition`` with reason
        ``ESCALATION_ALREADY_RESOLVED`` and the winning decision in its metadata when it is
        no longer pending. With a ``request_id``, a retry of the same resolve returns the
        escalation as it stands (``change`` None) even when both attempts race.
        """
        now = _utc(now)
        try:
            async with self._database.write() as session:
                row = await session.scalar(_select(escalation_id, owner_scope))
                if row is None:
                    raise NotFound("escalation", escalation_id)
                if request_id:
                    replayed = await replayed_resource_id(
                        session,
                        owner_id=row.owner_id,
                        operation=RESOLVE_ESCALATION,
                        request_id=request_id,
                        fingerprint=fingerprint,
                    )
                    if replayed is not None:
                        return Resolved(to_escalation(row), None, await _job(session, row.job_id))
                asked = to_escalation(row)
                edited = check_resolution(
                    asked,
                    Resolution(
                        decision.decision,
                        decision.answer,
                        decision.arguments_digest,
                        decision.edited_arguments_json,
                    ),
                )
                pending = await _lock_job(session, row.job_id)
                statement = _decide(
                    escalation_id,
                    state=EscalationStatus.RESOLVED,
                    decision=decision.decision,
                    guidance=decision.guidance,
                    resolved_by=decision.resolved_by,
                    source=decision.source,
                    via_service=decision.via_service,
                    now=now,
                ).values(answer=decision.answer, approved_arguments_json=edited)
                updated = await _update_escalation(session, statement)
                if updated is None:
                    await session.refresh(row)
                    raise already_decided(to_escalation(row))
                escalation = to_escalation(updated)
                if request_id:
                    record_key(
                        session,
                        owner_id=row.owner_id,
                        operation=RESOLVE_ESCALATION,
                        request_id=request_id,
                        fingerprint=fingerprint,
                        resource_id=escalation_id,
                        now=now,
                    )
                change = await self._decided(session, escalation, pending, now)
                return Resolved(escalation, change, change.job)
        except IntegrityError:
            if not request_id:
                raise
            # A concurrent retry with the same request_id committed first: replay it.
            return await self.resolve(
                escalation_id,
                decision,
                owner_scope=owner_scope,
                request_id=request_id,
                fingerprint=fingerprint,
                now=now,
            )

    async def next_deadline(self) -> datetime | None:
        """The earliest deadline of any pending escalation."""
        async with self._database.read() as session:
            return await session.scalar(
                select(func.min(EscalationRow.deadline)).where(
                    EscalationRow.state == _PENDING, EscalationRow.deadline.is_not(None)
                )
            )

    async def expire_due(self, *, now: datetime, limit: int = 100) -> builtins.list[Change]:
        """Decide every pending escalation whose deadline has passed: with its default option,
        or expired without one, recorded as decided by the deadline. Each fires once, whichever
        replica gets there first."""
        now = _utc(now)
        async with self._database.read() as session:
            due = builtins.list(
                await session.scalars(
                    select(EscalationRow)
                    .where(EscalationRow.state == _PENDING, EscalationRow.deadline <= now)
                    .order_by(EscalationRow.deadline)
                    .limit(limit)
                )
            )
        changes = []
        for row in due:
            state, decision = deadline_outcome(to_escalation(row))
            statement = _decide(
                row.escalation_id,
                state=state,
                decision=decision,
                guidance="",
                resolved_by="",
                source=DecisionSource.DEADLINE,
                via_service="",
                now=now,
            )
            async with self._database.write() as session:
                pending = await _lock_job(session, row.job_id)
                updated = await _update_escalation(session, statement)
                if updated is None:  # answered, or fired by another replica, meanwhile
                    continue
                changes.append(await self._decided(session, to_escalation(updated), pending, now))
        return changes

    async def _decided(
        self, session: AsyncSession, escalation: Escalation, pending: Sequence[str], now: datetime
    ) -> Change:
        """The rest of a decision's transaction: its feed entry, and the job no longer
        listing it as pending (a change of the job, so its summary follows). With its last
        pending escalation decided, an agent waiting for input is working again: its runner
        resumes it, and it takes its answers."""
        feed = await self._event_log.append_escalation_event_in(
            session, EscalationEventKind.RESOLVED, escalation, now=now
        )
        remaining = [i for i in pending if i != escalation.escalation_id]
        values: dict[str, Any] = {"pending_escalations": remaining}
        if escalation.approved and escalation.decision == APPROVE_FOR_JOB:
            approved = await session.scalar(
                select(JobRow.approved_tools).where(JobRow.job_id == escalation.job_id)
            )
            if escalation.tool_name not in (approved or ()):
                values["approved_tools"] = [*(approved or ()), escalation.tool_name]
        if not remaining:
            values["agent_state"] = case(
                (JobRow.agent_state == AgentState.WAITING_FOR_INPUT.value, AgentState.WORKING.value),
                else_=JobRow.agent_state,
            )
        statement = update(JobRow).where(JobRow.job_id == escalation.job_id).values(**values)
        job_row = await _update_returning(session, statement, now)
        if job_row is None:
            return Change(escalation.job_id, None, feed=(feed,))
        # No event of the job: the decision reaches its log when the agent takes it. Its
        # pending escalations changed now, so the fleet hears of it now.
        fleet = await self._event_log.stamp_fleet_in(session, [escalation.job_id])
        return Change(
            escalation.job_id, job_of(job_row), feed=(feed,), fleet_sequence=fleet[escalation.job_id]
        )

    # --- delivering -----------------------------------------------------------------------

    async def deliver(
        self, job_id: str, runner_id: str, escalation_ids: Sequence[str], *, now: datetime
    ) -> tuple[builtins.list[Escalation], Change | None]:
        """Hand the agent the decisions of ``escalation_ids`` (all of one turn's).

        Returns the escalations as they stand. Once none of them is pending, marks the
        undelivered ones delivered, appends their ``agent.escalation_resolved`` events (with
        the words the agent is told) and sets the agent working, in one transaction; the
        change is ``None`` while some are pending, when everything was delivered already
        (after a restart), or when the job is not running here.
        """
        now = _utc(now)
        async with self._database.write() as session:
            await _lock_job(session, job_id)
            rows = builtins.list(
                await session.scalars(
                    select(EscalationRow)
                    .where(EscalationRow.escalation_id.in_(escalation_ids))
                    .execution_options(populate_existing=True)
                )
            )
            escalations = sorted(
                (to_escalation(row) for row in rows), key=lambda e: escalation_ids.index(e.escalation_id)
            )
            undelivered = {row.escalation_id for row in rows if row.delivered_time is None}
            if any(e.is_pending for e in escalations) or not undelivered:
                return escalations, None
            statement = (
                update(JobRow)
                .where(JobRow.job_id == job_id, JobRow.status == _RUNNING, JobRow.runner_id == runner_id)
                .values(agent_state=AgentState.WORKING.value, wake_at=None)
            )
            job_row = await _update_returning(session, statement, now)
            if job_row is None:
                return escalations, None
            payloads: list[EventPayload] = []
            for escalation in escalations:
                if escalation.escalation_id not in undelivered:
                    continue
                marked = await session.execute(
                    update(EscalationRow)
                    .where(
                        EscalationRow.escalation_id == escalation.escalation_id,
                        EscalationRow.delivered_time.is_(None),
                    )
                    .values(delivered_time=now)
                    .execution_options(synchronize_session=False)
                )
                if marked.rowcount:  # type: ignore[attr-defined]
                    payloads += approval_events(escalation)
                    if escalation.approved:
                        session.add(approved_execution(escalation, now))
                    payloads.append(
                        AgentEscalationResolved(
                            escalation_id=escalation.escalation_id,
                            decision=escalation.decision,
                            guidance=escalation.guidance,
                            resolved_by=escalation.resolved_by,
                            decision_source=escalation.decision_source,
                            resolved_via_service=escalation.resolved_via_service,
                            delivered=delivered_text(escalation),
                        )
                    )
            events = await self._events_in(session, job_id, payloads, now)
            return escalations, Change.of(job_of(job_row), events)

    async def _events_in(
        self, session: AsyncSession, job_id: str, payloads: Sequence[EventPayload], now: datetime
    ) -> builtins.list[JobEvent]:
        """Append ``payloads`` to the job's log inside ``session`` (none: no write)."""
        if not payloads:
            return []
        return await self._event_log.append_job_events_in(session, job_id, payloads, now=now)

    # --- reading --------------------------------------------------------------------------

    async def get(self, escalation_id: str, *, owner_scope: str | None) -> Escalation | None:
        """The escalation, or ``None`` if it does not exist or is outside ``owner_scope``."""
        async with self._database.read() as session:
            row = await session.scalar(_select(escalation_id, owner_scope))
            return None if row is None else to_escalation(row)

    async def list(
        self,
        *,
        owner_scope: str | None,
        job_id: str | None,
        statuses: Sequence[EscalationStatus],
        page_size: int,
        after: EscalationCursor | None,
    ) -> tuple[builtins.list[Escalation], EscalationCursor | None]:
        """One page of escalations, newest first, and the cursor of the next page."""
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        query = select(EscalationRow)
        if owner_scope is not None:
            query = query.where(EscalationRow.owner_id == owner_scope)
        if job_id is not None:
            query = query.where(EscalationRow.job_id == job_id)
        if statuses:
            query = query.where(EscalationRow.state.in_(sorted(s.value for s in statuses)))
        if after is not None:
            query = query.where(
                tuple_(EscalationRow.create_time, EscalationRow.escalation_id) < (_utc(after[0]), after[1])
            )
        query = query.order_by(EscalationRow.create_time.desc(), EscalationRow.escalation_id.desc()).limit(
            page_size + 1
        )
        async with self._database.read() as session:
            found = [to_escalation(row) for row in await session.scalars(query)]
        if len(found) <= page_size:
            return found, None
        page = found[:page_size]
        return page, (page[-1].create_time, page[-1].escalation_id)

    async def pending_ids(self, job_id: str) -> builtins.list[str]:
        """The job's pending escalations, oldest first."""
        async with self._database.read() as session:
            return builtins.list(
                await session.scalars(
                    select(EscalationRow.escalation_id)
                    .where(EscalationRow.job_id == job_id, EscalationRow.state == _PENDING)
                    .order_by(EscalationRow.create_time, EscalationRow.escalation_id)
                )
            )


async def _lock_job(session: AsyncSession, job_id: str) -> list[str]:
    """Lock the job's row, first of all (so transactions never wait on each other in a
    circle: every one takes the job, then escalation rows, then the feed's counter), and
    return its pending escalations."""
    pending = await session.scalar(
        select(JobRow.pending_escalations).where(JobRow.job_id == job_id).with_for_update()
    )
    return list(pending or ())


def already_decided(escalation: Escalation) -> FailedPrecondition:
    """The error of a resolve that comes too late, naming what happened instead."""
    metadata = {"escalation_id": escalation.escalation_id, "status": escalation.status.value}
    if escalation.decision:
        metadata["decision"] = escalation.decision
    if escalation.decision_source is not None:
        metadata["decision_source"] = escalation.decision_source.value
    return FailedPrecondition(
        ALREADY_RESOLVED,
        f"escalation {escalation.escalation_id!r} is {escalation.status.value} already"
        + (f" (decision {escalation.decision!r})" if escalation.decision else ""),
        metadata=metadata,
    )


def _select(escalation_id: str, owner_scope: str | None) -> Any:
    query = select(EscalationRow).where(EscalationRow.escalation_id == escalation_id)
    if owner_scope is not None:
        query = query.where(EscalationRow.owner_id == owner_scope)
    return query


def _decide(
    escalation_id: str,
    *,
    state: EscalationStatus,
    decision: str,
    guidance: str,
    resolved_by: str,
    source: DecisionSource,
    via_service: str,
    now: datetime,
) -> Update:
    return (
        update(EscalationRow)
        .where(EscalationRow.escalation_id == escalation_id, EscalationRow.state == _PENDING)
        .values(
            state=state.value,
            decision=decision,
            guidance=guidance,
            resolved_by=resolved_by,
            decision_source=source.value,
            resolved_via_service=via_service,
            resolve_time=now,
        )
    )


async def _update_escalation(session: AsyncSession, statement: Update) -> EscalationRow | None:
    return await session.scalar(
        statement.returning(EscalationRow),
        execution_options={"synchronize_session": False, "populate_existing": True},
    )


async def _job(session: AsyncSession, job_id: str) -> Job | None:
    row = await session.get(JobRow, job_id, populate_existing=True)
    return None if row is None else job_of(row)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
