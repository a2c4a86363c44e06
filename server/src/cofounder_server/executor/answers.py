"""Asking a person and taking the answers.

A tool call of the current turn may need a person: its tool asked a question
(``ask_human``), or it failed in a way retrying will not fix. Each such call raises an
escalation (:class:`Ask`). The escalations of a turn are raised after its iteration is
committed, and noted in the loop state committed with it, so a restart waits for them too.
While any is pending the agent parks waiting for input (its run ends, like a sleeping
agent's); the decision of its last one sets it working, so its runner resumes it. It then
takes every answer in one transaction that marks them delivered, each as the result of its
own tool call: a restart never delivers one twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cofounder_server.domain.approvals import (
    APPROVE,
    APPROVE_FOR_JOB,
    REJECT,
    ToolApprovalPolicy,
    canonical_json,
    digest_of,
)
from cofounder_server.domain.escalations import (
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
    Question,
    attempts_text,
    delivered_text,
)
from cofounder_server.domain.events import escalation_from_json, to_json
from cofounder_server.domain.model import AgentState, JobOutcome
from cofounder_server.executor.parking import Park
from cofounder_server.executor.plugins import Message, ToolCall, ToolSpec
from cofounder_server.executor.run_state import LoopState
from cofounder_server.executor.run_store import Pause, RunStore
from cofounder_server.executor.text import truncate_middle

ERROR_OPTIONS = (
    EscalationOption("retry", "Retry", "The cause is fixed: run the call again."),
    EscalationOption("skip", "Skip", "Go on without this call's result."),
    EscalationOption("stop", "Stop", "End the turn; the agent reports what it has."),
)
"""What a person may decide about a failing tool call."""

APPROVAL_OPTIONS = (
    EscalationOption(APPROVE, "Approve", "Run this call (with edited arguments, if given)."),
    EscalationOption(APPROVE_FOR_JOB, "Approve for the job", "Run this call and later calls of this tool."),
    EscalationOption(REJECT, "Reject", "Do not run it; the guidance tells the agent why."),
)
"""What a person may decide about a call waiting for approval."""


class ApprovedCalls(Protocol):
    """Settles decided tool approvals (see ``executor.approvals``)."""

    async def settle(self, escalation: Escalation, state: LoopState, pause: Pause) -> Message:
        """The tool result of the call ``escalation`` decided: the call's own result once
        approved (it runs at most once), or the rejection."""
        ...


@dataclass(frozen=True)
class Ask:
    """A tool call of the current turn that needs a person: the escalation it raises."""

    call: ToolCall
    escalation: Escalation


def escalation_id(job_id: str, iteration: int, call: ToolCall) -> str:
    """The id of the escalation a call raises. Derived from the job, the turn and the call:
    raising it again after a restart finds the stored one instead of asking twice."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cofounder:{job_id}:{iteration}:{call.call_id}"))


def question_escalation(
    store: RunStore, call: ToolCall, question: Question, iteration: int, now: datetime
) -> Escalation:
    """The escalation of a tool that asked ``question``."""
    job = store.job
    return Escalation(
        escalation_id=escalation_id(job.job_id, iteration, call),
        job_id=job.job_id,
        owner_id=job.owner_id,
        status=EscalationStatus.PENDING,
        trigger=EscalationTrigger.AGENT_QUESTION,
        problem=question.question,
        create_time=now,
        recommended_action=question.recommended,
        options=question.options,
        tool_call_id=call.call_id,
        tool_name=call.name,
        deadline=question.deadline(now),
        default_option=question.default,
        answer_kind=question.answer_kind,
        answer_schema_json=question.answer_schema_json,
        answer_max_chars=question.answer_max_chars,
    )


def approval_escalation(
    store: RunStore,
    call: ToolCall,
    spec: ToolSpec,
    policy: ToolApprovalPolicy,
    *,
    iteration: int,
    now: datetime,
) -> Escalation:
    """The escalation of a call that waits for approval: the call exactly as the agent asked
    (canonical JSON arguments and their digest), the tool's input schema for edits, and the
    policy's deadline with the decision it applies."""
    job = store.job
    arguments = canonical_json(dict(call.input))
    deadline = now + timedelta(seconds=policy.deadline_seconds) if policy.deadline_seconds else None
    return Escalation(
        escalation_id=escalation_id(job.job_id, iteration, call),
        job_id=job.job_id,
        owner_id=job.owner_id,
        status=EscalationStatus.PENDING,
        trigger=EscalationTrigger.TOOL_APPROVAL,
        problem=f"The agent wants to run {call.name} with {truncate_middle(arguments, 2000)}",
        create_time=now,
        options=APPROVAL_OPTIONS,
        tool_call_id=call.call_id,
        tool_name=call.name,
        deadline=deadline,
        default_option=policy.default_decision,
        arguments_json=arguments,
        arguments_digest=digest_of(arguments),
        input_schema_json=canonical_json(dict(spec.input_schema)),
    )


def error_escalation(
    store: RunStore,
    call: ToolCall,
    trigger: EscalationTrigger,
    signature: str,
    failures: list[str],
    *,
    attempts: int,
    iteration: int,
    now: datetime,
) -> Escalation:
    """The escalation of a tool call that kept failing (``attempts`` times) or failed in a way
    retrying cannot fix."""
    job = store.job
    if trigger is EscalationTrigger.UNRETRYABLE_ERROR:
        problem = f"The tool {call.name} failed in a way retrying cannot fix: {failures[-1]}"
    else:
        problem = f"The tool {call.name} kept failing ({attempts} attempts): {failures[-1]}"
    return Escalation(
        escalation_id=escalation_id(job.job_id, iteration, call),
        job_id=job.job_id,
        owner_id=job.owner_id,
        status=EscalationStatus.PENDING,
        trigger=trigger,
        problem=problem,
        create_time=now,
        attempts=attempts_text(failures),
        recommended_action="retry" if trigger is EscalationTrigger.REPEATED_ERROR else "skip",
        options=ERROR_OPTIONS,
        error_signature=signature,
        tool_call_id=call.call_id,
        tool_name=call.name,
    )


def await_later(asks: list[Ask], state: LoopState, max_escalations: int) -> tuple[JobOutcome, str] | None:
    """Note the turn's escalated calls in the state committed with the turn (so a restart
    waits for them too), or end the job if they pass the cap on escalations."""
    if not asks:
        return None
    # Approvals are the job's policy, not the agent being stuck: they do not count.
    counted = [ask for ask in asks if ask.escalation.trigger is not EscalationTrigger.TOOL_APPROVAL]
    if counted and state.escalations + len(counted) > max_escalations:
        return (
            JobOutcome.ESCALATION_LIMIT,
            f"the agent needed a person more than {max_escalations} times "
            f"({counted[-1].escalation.problem[:200]})",
        )
    state.escalations += len(counted)
    state.awaiting = [
        {"call_id": ask.call.call_id, "tool_name": ask.call.name, "escalation": to_json(ask.escalation)}
        for ask in asks
    ]
    return None


async def take_answers(
    store: RunStore, state: LoopState, messages: list[Message], pause: Pause, approved: ApprovedCalls
) -> Park | None:
    """Take the decisions of the last turn's escalations, once all are made: each becomes the
    result of its tool call (delivered once, in one transaction), appended to ``messages``.
    While some are pending, the agent parks waiting for input (the decision's notification
    or the process's sweep resumes it)."""
    escalations = [escalation_from_json(entry["escalation"]) for entry in state.awaiting]
    ids = [escalation.escalation_id for escalation in escalations]
    decided, delivered = await store.take_answers(ids)
    if not delivered:
        if len(decided) < len(ids):  # the process stopped before raising them all
            stored = {escalation.escalation_id for escalation in decided}
            await store.raise_escalations([e for e in escalations if e.escalation_id not in stored])
            return Park(AgentState.WAITING_FOR_INPUT, None)
        pending = [escalation.escalation_id for escalation in decided if escalation.is_pending]
        if pending:
            if store.job.agent_state is not AgentState.WAITING_FOR_INPUT:  # woke from a budget sleep
                await store.waiting_again(pending, pause)
            return Park(AgentState.WAITING_FOR_INPUT, None)
        await store.still_running()  # delivered before a restart
    by_id = {escalation.escalation_id: escalation for escalation in decided}
    for entry, asked in zip(state.awaiting, escalations, strict=True):
        escalation = by_id[asked.escalation_id]
        if escalation.trigger is EscalationTrigger.TOOL_APPROVAL:
            # An approved call runs now (once, whatever restarts happen); a rejected one never.
            messages.append(await approved.settle(escalation, state, pause))
            continue
        messages.append(
            Message(
                role="tool",
                text=delivered_text(escalation),
                call_id=entry["call_id"],
                tool_name=entry["tool_name"],
                is_error=escalation.status is EscalationStatus.EXPIRED,
            )
        )
        if escalation.error_signature:
            state.retries.reset(escalation.error_signature)
    state.awaiting = []
    return None
