"""Escalations belong to their job's owner: the owner, a service acting for the owner and
operators may read and resolve one; for anyone else it is NOT_FOUND, exactly like a missing
one. The escalation records who decided and how."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import update

from cofounder.agent.v1 import escalation_pb2
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder.agent.v1 import escalation_service_pb2_grpc as esc_grpc
from cofounder_server.app import Application
from cofounder_server.domain.events import Escalation, EscalationOption, EscalationStatus, EscalationTrigger
from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.store.database import Database, open_database
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.models import JobRow
from tests.auth.support import ALICE, BILLING, BOB, ONCALL, Caller
from tests.auth.test_tenancy import failure, submit, without_id
from tests.support import RPC_TIMEOUT

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
