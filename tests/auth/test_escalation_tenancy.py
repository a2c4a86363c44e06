"""Escalations belong to their job's owner: the owner, a service acting for the owner and
operators may read and resolve one; for anyone else it is NOT_FOUND, exactly like a missing
one. The escalation records who decided and how."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import update

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder.agent.v1 import escalation_service_pb2_grpc as esc_grpc
from cofounder.agent.v1.agent_control_service_pb2_grpc import AgentControlServiceStub
from cofounder_server.app import Application
from cofounder_server.domain.escalations import (
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
)
from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.store.database import Database, open_database
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.models import JobRow
from tests.auth.support import ALICE, BILLING, BOB, ONCALL, Caller, submit_request
from tests.auth.test_tenancy import failure, submit, without_id
from tests.support import RPC_TIMEOUT, eventually

RUNNER = "tenancy-test-runner"


@pytest.fixture
async def database(auth_app: Application) -> AsyncIterator[Database]:
    db = await open_database(auth_app.database_url)
    yield db
    await db.close()


async def raised_for(database: Database, jobs, project_id: str) -> str:
    """An escalation pending on a new job of Alice's (raised as the executor would)."""
    job = await submit(jobs, ALICE, project_id)
    async with database.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.job_id == job.job_id)
            .values(status=JobStatus.RUNNING.value, runner_id=RUNNER, agent_state=AgentState.WORKING.value)
        )
    escalation = Escalation(
        escalation_id=str(uuid.uuid4()),
        job_id=job.job_id,
        owner_id="alice",
        status=EscalationStatus.PENDING,
        trigger=EscalationTrigger.AGENT_QUESTION,
        problem="Which database?",
        create_time=datetime.now(UTC),
        options=(EscalationOption("pg"), EscalationOption("sqlite")),
    )
    repository = EscalationRepository(database, EventLogRepository(database, retention_events=10_000))
    assert await repository.raise_for(job.job_id, RUNNER, [escalation], now=datetime.now(UTC)) is not None
    return escalation.escalation_id


def resolve(stub, caller: Caller, escalation_id: str, decision: str, on_behalf_of: str | None = None):
    return stub.ResolveEscalation(
        esc.ResolveEscalationRequest(escalation_id=escalation_id, decision=decision),
        metadata=caller.metadata(on_behalf_of),
        timeout=RPC_TIMEOUT,
    )


def get(stub, caller: Caller, escalation_id: str, on_behalf_of: str | None = None):
    return stub.GetEscalation(
        esc.GetEscalationRequest(escalation_id=escalation_id),
        metadata=caller.metadata(on_behalf_of),
        timeout=RPC_TIMEOUT,
    )


@pytest.mark.parametrize(
    ("intruder", "on_behalf_of"), [(BOB, None), (BILLING, "bob")], ids=["user", "service"]
)
async def test_another_tenants_escalation_is_not_found_and_unchanged(
    auth_channel, jobs, database, project_id, *, intruder, on_behalf_of
) -> None:
    stub = esc_grpc.EscalationServiceStub(auth_channel)
    escalation_id = await raised_for(database, jobs, project_id)
    missing_id = str(uuid.uuid4())
    for call in (
        lambda i: resolve(stub, intruder, i, "pg", on_behalf_of),
        lambda i: get(stub, intruder, i, on_behalf_of),
    ):
        foreign = await failure(call(escalation_id))
        missing = await failure(call(missing_id))
        assert foreign.code == grpc.StatusCode.NOT_FOUND
        assert without_id(foreign, escalation_id) == without_id(missing, missing_id)
    listed = await stub.ListEscalations(
        esc.ListEscalationsRequest(), metadata=intruder.metadata(on_behalf_of), timeout=RPC_TIMEOUT
    )
    assert escalation_id not in {e.escalation_id for e in listed.escalations}
    after = await get(stub, ALICE, escalation_id)
    assert after.escalation.status == escalation_pb2.ESCALATION_STATUS_PENDING


async def test_a_service_resolves_for_the_owner_and_is_recorded_as_such(
    auth_channel, jobs, database, project_id
) -> None:
    stub = esc_grpc.EscalationServiceStub(auth_channel)
    escalation_id = await raised_for(database, jobs, project_id)
    response = await resolve(stub, BILLING, escalation_id, "sqlite", on_behalf_of="alice")
    resolved = response.escalation
    assert (resolved.decision, resolved.resolved_by, resolved.resolved_via_service) == (
        "sqlite",
        "alice",
        "billing-backend",
    )
    assert resolved.decision_source == escalation_pb2.DECISION_SOURCE_SERVICE


async def test_the_owner_and_an_operator_resolve_in_person(auth_channel, jobs, database, project_id) -> None:
    stub = esc_grpc.EscalationServiceStub(auth_channel)
    mine, theirs = await raised_for(database, jobs, project_id), await raised_for(database, jobs, project_id)
    by_owner = (await resolve(stub, ALICE, mine, "pg")).escalation
    assert (by_owner.resolved_by, by_owner.decision_source) == (
        "alice",
        escalation_pb2.DECISION_SOURCE_PERSON,
    )
    assert (await get(stub, ONCALL, theirs)).escalation.owner_id == "alice"
    by_operator = (await resolve(stub, ONCALL, theirs, "pg")).escalation
    assert (by_operator.resolved_by, by_operator.decision_source) == (
        "oncall",
        escalation_pb2.DECISION_SOURCE_PERSON,
    )


async def test_another_tenants_resolve_leaves_the_agent_waiting_for_its_owner(
    settings_for, principals_path, project_id
) -> None:
    """End to end, with an agent that asks: another user's and a service's resolves for
    another user are NOT_FOUND and change nothing; the owner's answer is the one the agent
    receives."""
    app = await Application.start(
        settings_for(
            auth_tokens_file=str(principals_path),
            executor_enabled=True,
            claim_interval_seconds=0.2,
            rate_limit_per_second=0,
            service_rate_limit_per_second=0,
        )
    )
    ask = {
        "name": "ask_human",
        "call_id": "q1",
        "input": {"question": "Which database?", "options": [{"value": "pg"}, {"value": "sqlite"}]},
    }
    usage = {"input_tokens": 10, "output_tokens": 1}
    request = submit_request(project_id)
    request.agent.config.Clear()
    request.agent.config.update(
        {"turns": [{"text": "asking", "tool_calls": [ask], "usage": usage}, {"text": "done", "usage": usage}]}
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            jobs = AgentControlServiceStub(channel)
            stub = esc_grpc.EscalationServiceStub(channel)
            job = (await jobs.SubmitJob(request, metadata=ALICE.metadata(), timeout=RPC_TIMEOUT)).job

            async def pending() -> list[escalation_pb2.Escalation]:
                listed = await stub.ListEscalations(
                    esc.ListEscalationsRequest(job_id=job.job_id),
                    metadata=ALICE.metadata(),
                    timeout=RPC_TIMEOUT,
                )
                return list(listed.escalations)

            (raised,) = await eventually(pending, lambda found: len(found) == 1)
            for intruder, on_behalf_of in ((BOB, None), (BILLING, "bob")):
                foreign = await failure(resolve(stub, intruder, raised.escalation_id, "sqlite", on_behalf_of))
                assert foreign.code == grpc.StatusCode.NOT_FOUND
            assert (await get(stub, ALICE, raised.escalation_id)).escalation.status == (
                escalation_pb2.ESCALATION_STATUS_PENDING
            )
            assert (await resolve(stub, ALICE, raised.escalation_id, "pg")).agent_waiting

            async def status() -> job_pb2.Job:
                got = await jobs.GetJob(
                    pb.GetJobRequest(job_id=job.job_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
                )
                return got.job

            done = await eventually(status, lambda j: j.status == job_pb2.JOB_STATUS_READY)
            assert done.outcome == job_pb2.JOB_OUTCOME_COMPLETED
            events: list[Any] = []
            watch = jobs.WatchJobEvents(
                pb.WatchJobEventsRequest(job_id=job.job_id, after_sequence=0),
                metadata=ALICE.metadata(),
                timeout=RPC_TIMEOUT,
            )
            async for message in watch:
                if message.WhichOneof("kind") == "events":
                    events.extend(message.events.events)
                if (
                    events
                    and events[-1].type == "job.status_changed"
                    and events[-1].job_status_changed.status == (job_pb2.JOB_STATUS_READY)
                ):
                    watch.cancel()
                    break
            assert [event.type for event in events] == [
                "job.status_changed",
                "job.status_changed",
                "agent.thinking",
                "agent.budget_updated",
                "agent.escalation_raised",
                "agent.waiting_for_input",
                "agent.escalation_resolved",
                "agent.thinking",
                "agent.budget_updated",
                "job.status_changed",
            ]
            resolved = events[6].agent_escalation_resolved
            assert (resolved.decision, resolved.resolved_by) == ("pg", "alice")
    finally:
        await app.stop(grace_seconds=1.0)
