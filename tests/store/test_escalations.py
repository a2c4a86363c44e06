"""EscalationRepository against a real database: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from cofounder_server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cofounder_server.domain.escalations import (
    DecisionSource,
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
)
from cofounder_server.domain.events import (
    AgentEscalationRaised,
    AgentEscalationResolved,
    AgentRetrying,
    AgentWaitingForInput,
    EscalationEventKind,
)
from cofounder_server.domain.model import AgentState, Job, JobStatus
from cofounder_server.store.database import Database, open_database
from cofounder_server.store.escalation_rows import withdraw_pending_in
from cofounder_server.store.escalations import Decision, EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.models import JobRow

from .support import T0, new_job

RUNNER = "runner-1"


@pytest.fixture
def event_log(database: Database) -> EventLogRepository:
    return EventLogRepository(database, retention_events=10_000)


@pytest.fixture
def escalations(database: Database, event_log: EventLogRepository) -> EscalationRepository:
    return EscalationRepository(database, event_log)


async def running_job(database: Database, owner: str = "alice") -> Job:
    job, _ = await JobRepository(database, EventLogRepository(database, retention_events=10)).create(
        new_job(owner_id=owner), request_id=None, fingerprint="f", now=T0
    )
    async with database.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.job_id == job.job_id)
            .values(status=JobStatus.RUNNING.value, runner_id=RUNNER, agent_state=AgentState.WORKING.value)
        )
    return job


def question(job: Job, call_id: str = "call-1", **overrides: object) -> Escalation:
    values: dict[str, object] = {
        "escalation_id": str(uuid.uuid4()),
        "job_id": job.job_id,
        "owner_id": job.owner_id,
        "status": EscalationStatus.PENDING,
        "trigger": EscalationTrigger.AGENT_QUESTION,
        "problem": "Which database?",
        "create_time": T0,
        "options": (EscalationOption("pg", "PostgreSQL"), EscalationOption("sqlite")),
        "recommended_action": "pg",
        "tool_call_id": call_id,
        "tool_name": "ask_human",
    }
    values.update(overrides)
    return Escalation(**values)  # type: ignore[arg-type]


def person(decision: str = "pg", by: str = "alice") -> Decision:
    return Decision(decision, "go ahead", by, DecisionSource.PERSON)


async def test_raising_stores_announces_and_sets_the_agent_waiting(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    raised = question(job)
    retry = AgentRetrying("sig", 3, 3, "boom")
    change = await escalations.raise_for(job.job_id, RUNNER, [raised], before=[retry], now=T0)

    assert change is not None
    assert change.job is not None
    assert change.job.agent_state is AgentState.WAITING_FOR_INPUT
    assert change.job.pending_escalation_ids == (raised.escalation_id,)
    assert [e.payload for e in change.events] == [
        retry,
        AgentEscalationRaised(raised),
        AgentWaitingForInput(raised.escalation_id),
    ]
    assert [(f.kind, f.escalation) for f in change.feed] == [(EscalationEventKind.RAISED, raised)]
    assert await escalations.get(raised.escalation_id, owner_scope="alice") == raised
    assert await escalations.count_for_job(job.job_id) == 1

    again = await escalations.raise_for(job.job_id, RUNNER, [raised], now=T0)
    assert again is not None
    assert (again.escalations, again.events, again.feed) == ((), (), ())
    assert await escalations.raise_for(job.job_id, "another-runner", [question(job)], now=T0) is None


async def test_another_owner_cannot_see_or_resolve(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    raised = question(job)
    await escalations.raise_for(job.job_id, RUNNER, [raised], now=T0)

    assert await escalations.get(raised.escalation_id, owner_scope="mallory") is None
    with pytest.raises(NotFound):
        await escalations.resolve(
            raised.escalation_id,
            person(by="mallory"),
            owner_scope="mallory",
            request_id="",
            fingerprint="f",
            now=T0,
        )
    assert (await escalations.get(raised.escalation_id, owner_scope=None)).is_pending  # type: ignore[union-attr]


async def test_a_decision_outside_the_options_records_nothing(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    raised = question(job)
    await escalations.raise_for(job.job_id, RUNNER, [raised], now=T0)
    with pytest.raises(InvalidArgument):
        await escalations.resolve(
            raised.escalation_id,
            person("mysql"),
            owner_scope="alice",
            request_id="r1",
            fingerprint="f",
            now=T0,
        )
    assert await escalations.get(raised.escalation_id, owner_scope=None) == raised
    # The request_id was not used up by the rejected call.
    resolved = await escalations.resolve(
        raised.escalation_id, person(), owner_scope="alice", request_id="r1", fingerprint="g", now=T0
    )
    assert resolved.escalation.decision == "pg"


async def test_resolve_is_idempotent_on_request_id_and_then_already_resolved(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    raised = question(job)
    await escalations.raise_for(job.job_id, RUNNER, [raised], now=T0)
    later = T0 + timedelta(minutes=1)
    first = await escalations.resolve(
        raised.escalation_id, person(), owner_scope="alice", request_id="r1", fingerprint="f", now=later
    )
    assert first.change is not None
    assert first.change.job is not None
    assert first.change.job.pending_escalation_ids == ()
    assert first.escalation.status is EscalationStatus.RESOLVED
    assert (first.escalation.decision, first.escalation.resolved_by) == ("pg", "alice")
    assert first.escalation.decision_source is DecisionSource.PERSON
    assert first.escalation.resolve_time == later
    assert [f.kind for f in first.change.feed] == [EscalationEventKind.RESOLVED]

    replay = await escalations.resolve(
        raised.escalation_id, person(), owner_scope="alice", request_id="r1", fingerprint="f", now=later
    )
    assert (replay.escalation, replay.change) == (first.escalation, None)
    with pytest.raises(AlreadyExists):
        await escalations.resolve(
            raised.escalation_id,
            person("sqlite"),
            owner_scope="alice",
            request_id="r1",
            fingerprint="x",
            now=later,
        )
    with pytest.raises(FailedPrecondition) as raised_error:
        await escalations.resolve(
            raised.escalation_id,
            person("sqlite"),
            owner_scope="alice",
            request_id="r2",
            fingerprint="y",
            now=later,
        )
    assert raised_error.value.reason == "ESCALATION_ALREADY_RESOLVED"
    assert raised_error.value.metadata["decision"] == "pg"
    assert raised_error.value.metadata["decision_source"] == "person"


async def test_exactly_one_of_many_concurrent_resolves_wins_across_connections(
    database: Database, escalations: EscalationRepository, migrated_url: str
) -> None:
    job = await running_job(database)
    raised = question(job)
    await escalations.raise_for(job.job_id, RUNNER, [raised], now=T0)
    other_database = await open_database(migrated_url)
    try:
        other = EscalationRepository(
            other_database, EventLogRepository(other_database, retention_events=10_000)
        )

        async def attempt(i: int) -> str:
            repository = escalations if i % 2 else other
            try:
                await repository.resolve(
                    raised.escalation_id,
                    person("pg" if i % 3 else "sqlite"),
                    owner_scope="alice",
                    request_id=f"r{i}",
                    fingerprint=f"f{i}",
                    now=T0,
                )
            except FailedPrecondition:
                return "lost"
            return "won"

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
    finally:
        await other_database.close()
    assert results.count("won") == 1


async def test_deadlines_apply_the_default_or_expire_once(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    deadline = T0 + timedelta(minutes=5)
    with_default = question(job, "c1", deadline=deadline, default_option="sqlite")
    without = question(job, "c2", deadline=deadline + timedelta(minutes=1))
    await escalations.raise_for(job.job_id, RUNNER, [with_default, without], now=T0)
    assert await escalations.next_deadline() == deadline

    assert await escalations.expire_due(now=deadline - timedelta(seconds=1)) == []
    (fired,) = await escalations.expire_due(now=deadline)
    (decided,) = fired.escalations
    assert (decided.status, decided.decision, decided.decision_source, decided.resolved_by) == (
        EscalationStatus.RESOLVED,
        "sqlite",
        DecisionSource.DEADLINE,
        "",
    )
    assert await escalations.expire_due(now=deadline) == []
    (fired,) = await escalations.expire_due(now=deadline + timedelta(hours=1))
    assert fired.escalations[0].status is EscalationStatus.EXPIRED
    assert fired.escalations[0].decision == ""
    assert await escalations.next_deadline() is None


async def test_delivery_waits_for_every_answer_and_happens_once(
    database: Database, escalations: EscalationRepository
) -> None:
    job = await running_job(database)
    first, second = question(job, "c1"), question(job, "c2")
    ids = [first.escalation_id, second.escalation_id]
    await escalations.raise_for(job.job_id, RUNNER, [first, second], now=T0)
    await escalations.resolve(
        second.escalation_id, person("sqlite"), owner_scope=None, request_id="", fingerprint="", now=T0
    )
    current, change = await escalations.deliver(job.job_id, RUNNER, ids, now=T0)
    assert change is None
    job_now = await JobRepository(database, EventLogRepository(database, retention_events=10)).get(
        job.job_id, owner_scope=None
    )
    assert job_now is not None
    assert job_now.pending_escalation_ids == (first.escalation_id,)
    assert [e.status for e in current] == [EscalationStatus.PENDING, EscalationStatus.RESOLVED]

    await escalations.resolve(
        first.escalation_id, person("pg"), owner_scope=None, request_id="", fingerprint="", now=T0
    )
    current, change = await escalations.deliver(job.job_id, RUNNER, ids, now=T0)
    assert [e.escalation_id for e in current] == ids
    assert change is not None
    assert change.job is not None
    assert change.job.agent_state is AgentState.WORKING
    payloads = [e.payload for e in change.events]
    assert all(isinstance(p, AgentEscalationResolved) for p in payloads)
    assert [(p.escalation_id, p.decision) for p in payloads] == [  # type: ignore[union-attr]
        (first.escalation_id, "pg"),
        (second.escalation_id, "sqlite"),
    ]
    assert payloads[0].delivered.startswith("Answered by alice: pg (PostgreSQL).")  # type: ignore[union-attr]

    _, again = await escalations.deliver(job.job_id, RUNNER, ids, now=T0)
    assert again is None


async def test_withdrawing_ends_every_pending_escalation_of_the_job(
    database: Database, escalations: EscalationRepository, event_log: EventLogRepository
) -> None:
    job = await running_job(database)
    pending, answered = question(job, "c1"), question(job, "c2")
    await escalations.raise_for(job.job_id, RUNNER, [pending, answered], now=T0)
    await escalations.resolve(
        answered.escalation_id, person(), owner_scope=None, request_id="", fingerprint="", now=T0
    )
    async with database.write() as session:
        payloads, feed = await withdraw_pending_in(session, event_log, job.job_id, reason="cancelled", now=T0)
    assert [p.escalation_id for p in payloads] == [pending.escalation_id]  # type: ignore[union-attr]
    assert [(f.kind, f.escalation.status) for f in feed] == [
        (EscalationEventKind.WITHDRAWN, EscalationStatus.WITHDRAWN)
    ]
    assert await escalations.pending_ids(job.job_id) == []
    job_now = await JobRepository(database, EventLogRepository(database, retention_events=10)).get(
        job.job_id, owner_scope=None
    )
    assert job_now is not None
    assert job_now.pending_escalation_ids == ()


async def test_listing_is_newest_first_filtered_and_paginated(
    database: Database, escalations: EscalationRepository
) -> None:
    job, other_job = await running_job(database), await running_job(database)
    made = [question(job, f"c{i}", create_time=T0 + timedelta(seconds=i)) for i in range(5)]
    await escalations.raise_for(job.job_id, RUNNER, made, now=T0)
    await escalations.raise_for(other_job.job_id, RUNNER, [question(other_job)], now=T0)
    await escalations.resolve(
        made[0].escalation_id, person(), owner_scope=None, request_id="", fingerprint="", now=T0
    )

    page, cursor = await escalations.list(
        owner_scope="alice", job_id=job.job_id, statuses=[], page_size=2, after=None
    )
    assert [e.escalation_id for e in page] == [made[4].escalation_id, made[3].escalation_id]
    rest, end = await escalations.list(
        owner_scope="alice", job_id=job.job_id, statuses=[], page_size=10, after=cursor
    )
    assert [e.escalation_id for e in rest] == [m.escalation_id for m in reversed(made[:3])]
    assert end is None
    pending, _ = await escalations.list(
        owner_scope="alice", job_id=job.job_id, statuses=[EscalationStatus.PENDING], page_size=10, after=None
    )
    assert len(pending) == 4
    everything, _ = await escalations.list(
        owner_scope=None, job_id=None, statuses=[], page_size=10, after=None
    )
    assert len(everything) == 6
    nothing, _ = await escalations.list(
        owner_scope="mallory", job_id=None, statuses=[], page_size=10, after=None
    )
    assert nothing == []
