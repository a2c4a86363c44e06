"""Escalation rows: their conversion to and from domain values, and the withdrawal of a
job's pending escalations inside the transaction that ends the job."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.escalations import (
    AnswerKind,
    DecisionSource,
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
)
from cofounder_server.domain.events import (
    AgentEscalationWithdrawn,
    EscalationEvent,
    EscalationEventKind,
    EventPayload,
)
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.models import EscalationRow, JobRow


async def withdraw_pending_in(
    session: AsyncSession, event_log: EventLogRepository, job_id: str, *, reason: str, now: datetime
) -> tuple[list[EventPayload], list[EscalationEvent]]:
    """Withdraw the job's pending escalations inside the caller's transaction (its job is
    ending): the ``agent.escalation_withdrawn`` payloads for the job's events, and the feed
    entries. Call it before the job's own UPDATE, which then returns the job with no pending
    escalations."""
    now = now.astimezone(UTC)
    await session.execute(
        update(JobRow).where(JobRow.job_id == job_id).values(pending_escalations=[]),
        execution_options={"synchronize_session": False},
    )
    statement = (
        update(EscalationRow)
        .where(EscalationRow.job_id == job_id, EscalationRow.state == EscalationStatus.PENDING.value)
        .values(state=EscalationStatus.WITHDRAWN.value, resolve_time=now)
        .returning(EscalationRow)
    )
    rows = (await session.scalars(statement, execution_options={"synchronize_session": False})).all()
    payloads: list[EventPayload] = []
    feed = []
    for row in sorted(rows, key=lambda r: (r.create_time, r.escalation_id)):
        escalation = to_escalation(row)
        payloads.append(AgentEscalationWithdrawn(escalation.escalation_id, reason))
        feed.append(
            await event_log.append_escalation_event_in(
                session, EscalationEventKind.WITHDRAWN, escalation, now=now
            )
        )
    return payloads, feed


def new_row(escalation: Escalation) -> EscalationRow:
    """The row of a newly raised escalation."""
    return EscalationRow(
        escalation_id=escalation.escalation_id,
        job_id=escalation.job_id,
        owner_id=escalation.owner_id,
        state=escalation.status.value,
        trigger=escalation.trigger.value,
        problem=escalation.problem,
        attempts=list(escalation.attempts),
        recommended_action=escalation.recommended_action,
        options=[dataclasses.asdict(option) for option in escalation.options],
        error_signature=escalation.error_signature,
        tool_call_id=escalation.tool_call_id,
        tool_name=escalation.tool_name,
        deadline=escalation.deadline,
        default_option=escalation.default_option,
        create_time=escalation.create_time.astimezone(UTC),
        resolve_time=None,
        decision="",
        guidance="",
        resolved_by="",
        decision_source=None,
        resolved_via_service="",
        delivered_time=None,
        arguments_json=escalation.arguments_json,
        arguments_digest=escalation.arguments_digest,
        input_schema_json=escalation.input_schema_json,
        approved_arguments_json="",
        answer_kind=escalation.answer_kind.value,
        answer_schema_json=escalation.answer_schema_json,
        answer_max_chars=escalation.answer_max_chars,
        answer="",
    )


def to_escalation(row: EscalationRow) -> Escalation:
    """The escalation a row holds."""
    return Escalation(
        escalation_id=row.escalation_id,
        job_id=row.job_id,
        owner_id=row.owner_id,
        status=EscalationStatus(row.state),
        trigger=EscalationTrigger(row.trigger),
        problem=row.problem,
        create_time=row.create_time,
        attempts=tuple(row.attempts),
        recommended_action=row.recommended_action,
        options=tuple(EscalationOption(**option) for option in row.options),
        error_signature=row.error_signature,
        resolve_time=row.resolve_time,
        decision=row.decision,
        guidance=row.guidance,
        resolved_by=row.resolved_by,
        decision_source=None if row.decision_source is None else DecisionSource(row.decision_source),
        resolved_via_service=row.resolved_via_service,
        tool_call_id=row.tool_call_id,
        tool_name=row.tool_name,
        deadline=row.deadline,
        default_option=row.default_option,
        arguments_json=row.arguments_json,
        arguments_digest=row.arguments_digest,
        input_schema_json=row.input_schema_json,
        approved_arguments_json=row.approved_arguments_json,
        answer_kind=AnswerKind(row.answer_kind),
        answer_schema_json=row.answer_schema_json,
        answer_max_chars=row.answer_max_chars,
        answer=row.answer,
    )
