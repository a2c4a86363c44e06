"""Approved tool calls' single executions in SQL (``tool_executions``).

An approved call's row is stored ``approved`` in the transaction that delivers the approval
to the agent. Before the tool runs, one conditional ``UPDATE ... WHERE state = 'approved'``
takes it to ``running`` and commits: of any number of attempts (a resumed run, another
replica) one starts the call, the others find it running or done. Its result is stored
``done`` with its ``agent.tool.called`` event. A row found ``running`` by a run that did
not start it belongs to a process that stopped mid-call: the call is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cofounder_server.domain.approvals import APPROVE_FOR_JOB
from cofounder_server.domain.changes import Change
from cofounder_server.domain.escalations import (
    Escalation,
    EscalationTrigger,
    ToolExecutionState,
    approval_text,
)
from cofounder_server.domain.events import (
    AgentToolApprovalRequested,
    AgentToolApproved,
    AgentToolRejected,
    EventPayload,
)
from cofounder_server.domain.model import JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.models import JobRow, ToolExecutionRow


@dataclass(frozen=True)
class Execution:
    """Where a call's execution stood when a run asked to start it."""

    started: bool
    """This run took it from ``approved`` to ``running``: it runs the tool now."""
    state: ToolExecutionState
    """The state found (``running`` now when ``started``)."""
    result: str = ""
    is_error: bool = False


def approval_requested(escalation: Escalation) -> list[EventPayload]:
    """The ``agent.tool.approval_requested`` of a newly raised tool approval (none for other
    escalations)."""
    if escalation.trigger is not EscalationTrigger.TOOL_APPROVAL:
        return []
    return [
        AgentToolApprovalRequested(
            escalation_id=escalation.escalation_id,
            tool_name=escalation.tool_name,
            call_id=escalation.tool_call_id,
            arguments_json=escalation.arguments_json,
            arguments_digest=escalation.arguments_digest,
        )
    ]


def approval_events(escalation: Escalation) -> list[EventPayload]:
    """``agent.tool.approved`` or ``agent.tool.rejected`` of a tool approval delivered to its
    agent (none for other escalations)."""
    if escalation.trigger is not EscalationTrigger.TOOL_APPROVAL:
        return []
    if escalation.approved:
        return [
            AgentToolApproved(
                escalation_id=escalation.escalation_id,
                tool_name=escalation.tool_name,
                call_id=escalation.tool_call_id,
                arguments_json=escalation.final_arguments_json,
                edited=bool(escalation.approved_arguments_json),
                for_job=escalation.decision == APPROVE_FOR_JOB,
                approved_by=escalation.resolved_by,
                decision_source=escalation.decision_source,
            )
        ]
    return [
        AgentToolRejected(
            escalation_id=escalation.escalation_id,
            tool_name=escalation.tool_name,
            call_id=escalation.tool_call_id,
            message=approval_text(escalation),
            rejected_by=escalation.resolved_by,
            decision_source=escalation.decision_source,
        )
    ]


def approved_execution(escalation: Escalation, now: datetime) -> ToolExecutionRow:
    """The row of an approved call not started yet."""
    return ToolExecutionRow(
        escalation_id=escalation.escalation_id,
        job_id=escalation.job_id,
        call_id=escalation.tool_call_id,
        tool_name=escalation.tool_name,
        arguments_json=escalation.final_arguments_json,
        state=ToolExecutionState.APPROVED.value,
        result="",
        is_error=False,
        runner_id=None,
        update_time=now.astimezone(UTC),
    )


class ToolExecutionRepository:
    """Start and finish approved tool calls, each at most once. Raises domain errors only."""

    def __init__(self, database: Database, event_log: EventLogRepository) -> None:
        self._database = database
        self._event_log = event_log

    async def start(self, escalation: Escalation, runner_id: str, *, now: datetime) -> Execution | None:
        """Take the approved call of ``escalation`` to ``running`` (committed before this
        returns) if nobody did; otherwise where it stands. ``None``, and nothing starts, when
        the job is no longer running here (cancelled, ended, taken over)."""
        now = now.astimezone(UTC)
        async with self._database.write() as session:
            if not await _held(session, escalation.job_id, runner_id):
                return None
            taken = await session.execute(
                update(ToolExecutionRow)
                .where(
                    ToolExecutionRow.escalation_id == escalation.escalation_id,
                    ToolExecutionRow.state == ToolExecutionState.APPROVED.value,
                )
                .values(state=ToolExecutionState.RUNNING.value, runner_id=runner_id, update_time=now)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return Execution(True, ToolExecutionState.RUNNING)
            row = await session.scalar(
                select(ToolExecutionRow).where(ToolExecutionRow.escalation_id == escalation.escalation_id)
            )
            if row is None:  # approved before executions were stored: starts now
                running = approved_execution(escalation, now)
                running.state = ToolExecutionState.RUNNING.value
                running.runner_id = runner_id
                session.add(running)
                return Execution(True, ToolExecutionState.RUNNING)
            return Execution(False, ToolExecutionState(row.state), row.result, row.is_error)

    async def finish(
        self,
        job_id: str,
        runner_id: str,
        escalation_id: str,
        outcome: tuple[str, bool],
        events: list[EventPayload],
        *,
        now: datetime,
    ) -> Change | None:
        """Keep the call's result and whether it is an error (``done``) and append ``events``
        to the job's log, in one transaction; ``None`` when it was done already (nothing is
        appended twice) or the job is no longer running here (its log has ended or goes on
        elsewhere: the result is kept, the events are not appended)."""
        now = now.astimezone(UTC)
        result, is_error = outcome
        async with self._database.write() as session:
            held = await _held(session, job_id, runner_id)
            done = await session.execute(
                update(ToolExecutionRow)
                .where(
                    ToolExecutionRow.escalation_id == escalation_id,
                    ToolExecutionRow.state != ToolExecutionState.DONE.value,
                )
                .values(
                    state=ToolExecutionState.DONE.value, result=result, is_error=is_error, update_time=now
                )
                .execution_options(synchronize_session=False)
            )
            if not done.rowcount or not held:  # type: ignore[attr-defined]
                return None
            stored = await self._event_log.append_job_events_in(session, job_id, events, now=now)
        return Change.appended(stored)


async def _held(session: AsyncSession, job_id: str, runner_id: str) -> bool:
    """Whether the job runs here: its row locked first, as every transaction of a job does."""
    row = await session.execute(
        select(JobRow.status, JobRow.runner_id).where(JobRow.job_id == job_id).with_for_update()
    )
    found = row.first()
    return found is not None and found.status == JobStatus.RUNNING.value and found.runner_id == runner_id
