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
from datetime import datetime

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
from cofounder_server.executor.plugins import Message, ToolCall
from cofounder_server.executor.run_state import LoopState
from cofounder_server.executor.run_store import Pause, RunStore

ERROR_OPTIONS = (
    EscalationOption("retry", "Retry", "The cause is fixed: run the call again."),
    EscalationOption("skip", "Skip", "Go on without this call's result."),
    EscalationOption("stop", "Stop", "End the turn; the agent reports what it has."),
)
"""What a person may decide about a failing tool call."""


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
    if state.escalations + len(asks) > max_escalations:
        return (
            JobOutcome.ESCALATION_LIMIT,
            f"the agent needed a person more than {max_escalations} times "
            f"({asks[-1].escalation.problem[:200]})",
        )
    state.escalations += len(asks)
    state.awaiting = [
        {"call_id": ask.call.call_id, "tool_name": ask.call.name, "escalation": to_json(ask.escalation)}
        for ask in asks
    ]
    return None


async def take_answers(
    store: RunStore, state: LoopState, messages: list[Message], pause: Pause
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
