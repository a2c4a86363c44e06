"""The SQL event log: gap-free per-job sequences across replicas, retention, typed round trips."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder_server.domain import escalations
from cofounder_server.domain import events as model
from cofounder_server.domain.errors import NotFound
from cofounder_server.domain.model import JobOutcome, JobStatus
from cofounder_server.store.database import open_database
from cofounder_server.store.events import EventLogRepository
from tests.events.support import publish_many, thinking
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT, eventually

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


async def test_concurrent_appends_from_two_replicas_get_consecutive_sequences(
    app, jobs_stub, project_id, event_log
) -> None:
    job = await submit(jobs_stub, project_id)
    other_database = await open_database(app.database_url)
    try:
        other = EventLogRepository(other_database, retention_events=100_000)
        appended = await asyncio.gather(
            *(
                (event_log if i % 2 else other).append_job_events(
                    job.job_id, [thinking(i), thinking(i)], now=NOW
                )
                for i in range(30)
            )
        )
    finally:
        await other_database.close()
    sequences = sorted(event.sequence for batch in appended for event in batch)
    assert sequences == list(range(2, 62))
    for batch in appended:  # each append's events are consecutive
        assert batch[1].sequence == batch[0].sequence + 1
    page = await event_log.read_job_events(job.job_id, after=0, limit=1000)
    assert [e.sequence for e in page.events] == list(range(1, 62))
    assert page.bounds.last_sequence == 61


async def test_every_payload_type_round_trips(jobs_stub, project_id, event_log) -> None:
    job = await submit(jobs_stub, project_id)
    raised = escalations.Escalation(
        escalation_id="e1",
        job_id=job.job_id,
        owner_id="local",
        status=escalations.EscalationStatus.PENDING,
        trigger=escalations.EscalationTrigger.AGENT_QUESTION,
        problem="which colour?",
        create_time=NOW,
        options=(escalations.EscalationOption("red"),),
        tool_call_id="call-1",
        tool_name="ask_human",
        deadline=NOW,
        default_option="red",
    )
    approval = dataclasses.replace(
        raised,
        escalation_id="e2",
        trigger=escalations.EscalationTrigger.TOOL_APPROVAL,
        tool_call_id="call-2",
        tool_name="deploy",
        arguments_json='{"env":"prod"}',
        arguments_digest="ab" * 32,
        input_schema_json='{"type":"object"}',
        approved_arguments_json='{"env":"staging"}',
        answer_kind=escalations.AnswerKind.VALUE,
        answer_schema_json='{"type":"string"}',
        answer_max_chars=10,
        answer='"x"',
    )
    payloads = [
        model.AgentThinking(1, "hmm"),
        model.AgentToolCalled(1, "shell", '{"cmd": "ls"}', "a b", is_error=True),
        model.AgentBudgetUpdated(42, 420, 1000, 7),
        model.AgentSleeping(NOW, model.SleepReason.BUDGET_THRESHOLD),
        model.AgentWaking(model.WakeReason.REQUESTED, 5),
        model.AgentBudgetExceeded(120, 1200, 1000),
        model.AgentRetrying("sig", 2, 3, "boom"),
        model.AgentWaitingForInput("e1"),
        model.AgentEscalationRaised(raised),
        model.AgentEscalationResolved(
            "e1", "red", "go", "local", escalations.DecisionSource.SERVICE, "billing", "Answered: red."
        ),
        model.AgentEscalationWithdrawn("e1", "the job was cancelled"),
        model.AgentEscalationRaised(approval),
        model.AgentToolApprovalRequested("e2", "deploy", "call-2", '{"env":"prod"}', "ab" * 32),
        model.AgentToolApproved(
            "e2",
            "deploy",
            "call-2",
            '{"env":"staging"}',
            True,
            True,
            "local",
            escalations.DecisionSource.PERSON,
        ),
        model.AgentToolRejected(
            "e2", "deploy", "call-2", "Rejected by local", "", escalations.DecisionSource.DEADLINE
        ),
        model.AgentBuildPaused("budget"),
        model.PhaseStarted("build"),
        model.PhaseCompleted("build"),
        model.JobStatusChanged(JobStatus.FAILED, JobStatus.RUNNING, JobOutcome.MODEL_ERROR, "down"),
    ]
    assert {type(p) for p in payloads} == set(model.PAYLOAD_TYPES.values())
    await event_log.append_job_events(job.job_id, payloads, now=NOW)
    page = await event_log.read_job_events(job.job_id, after=1, limit=100)
    assert [e.payload for e in page.events] == payloads
    assert page.events[-1].type == "job.status_changed"


async def test_appending_to_a_missing_job_is_not_found(event_log) -> None:
    with pytest.raises(NotFound):
        await event_log.append_job_events("00000000-0000-4000-8000-000000000000", [thinking(1)], now=NOW)


async def test_get_job_status_reports_the_latest_sequence(app, jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)

    async def latest() -> int:
        request = pb.GetJobStatusRequest(job_id=job.job_id)
        return (await jobs_stub.GetJobStatus(request, timeout=RPC_TIMEOUT)).status.latest_event_sequence

    assert await latest() == 1
    await publish_many(app, job.job_id, [thinking(1), thinking(2)])
    assert await latest() == 3  # read-your-writes: the publisher invalidated the cached key

    # The key expired or was lost: SQL answers, and the key is written back.
    await redis.delete(f"cofounder:job:{job.job_id}:last_seq")
    assert await eventually(latest, lambda seq: seq == 3) == 3
    assert await redis.get(f"cofounder:job:{job.job_id}:last_seq") == b"3:"
