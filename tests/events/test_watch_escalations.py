"""WatchEscalations: the caller's escalations only, with the job feed's resume and error rules."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from cofounder.agent.v1 import escalation_pb2
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder_server.domain.escalations import (
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
)
from cofounder_server.domain.events import EscalationEventKind
from cofounder_server.domain.model import AgentSpec, NewJob
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from tests.events.support import STREAM_TIMEOUT, Stream, error_info, publish_escalation
from tests.events.support import watch as watch_job
from tests.integration.test_jobs import submit


def escalation(job_id: str, owner_id: str = "local", **changes: object) -> Escalation:
    fields: dict[str, object] = {
        "escalation_id": str(uuid.uuid4()),
        "job_id": job_id,
        "owner_id": owner_id,
        "status": EscalationStatus.PENDING,
        "trigger": EscalationTrigger.REPEATED_ERROR,
        "problem": "npm install keeps failing",
        "create_time": _now(),
        "attempts": ("retry", "clear cache"),
        "recommended_action": "skip",
        "options": (EscalationOption("skip", "Skip it"), EscalationOption("stop", "Stop")),
        "error_signature": "npm:E404",
    }
    fields.update(changes)
    return Escalation(**fields)  # type: ignore[arg-type]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def resolved(raised: Escalation) -> Escalation:
    return replace(
        raised, status=EscalationStatus.RESOLVED, decision="skip", resolve_time=_now(), resolved_by="local"
    )


def watch(stub, job_id: str = "", after: int | None = None) -> Stream:
    request = esc.WatchEscalationsRequest(job_id=job_id)
    if after is not None:
        request.after_sequence = after
    return Stream(stub.WatchEscalations(request, timeout=STREAM_TIMEOUT))


async def feed_events(stream: Stream, count: int) -> list[esc.EscalationEvent]:
    events: list[esc.EscalationEvent] = []
    while len(events) < count:
        message = await stream.next()
        if message.WhichOneof("kind") == "events":
            events.extend(message.events.events)
    return events


@pytest.fixture(scope="session")
async def bobs_job(database) -> str:
    """A job owned by someone else."""
    job, _ = await JobRepository(database, EventLogRepository(database, retention_events=1000)).create(
        NewJob("bob", "bobs-project", "bob's goal", 1_000_000, AgentSpec(brain="scripted")),
        request_id=None,
        fingerprint="",
        now=_now(),
    )
    return job.job_id


async def test_snapshot_then_only_the_callers_events(
    app, jobs_stub, escalations_stub, project_id, bobs_job
) -> None:
    job = await submit(jobs_stub, project_id)

    pending = escalation(job.job_id)
    await publish_escalation(app, EscalationEventKind.RAISED, pending)
    done = escalation(job.job_id)
    await publish_escalation(app, EscalationEventKind.RAISED, done)
    await publish_escalation(app, EscalationEventKind.RESOLVED, resolved(done))
    await publish_escalation(app, EscalationEventKind.RAISED, escalation(bobs_job, "bob"))

    stream = watch(escalations_stub, job.job_id)
    snapshot = (await stream.next()).snapshot
    assert [e.escalation_id for e in snapshot.pending] == [pending.escalation_id]
    assert snapshot.pending[0].status == escalation_pb2.ESCALATION_STATUS_PENDING
    assert [o.value for o in snapshot.pending[0].options] == ["skip", "stop"]

    bobs = await publish_escalation(app, EscalationEventKind.RAISED, escalation(bobs_job, "bob"))
    mine = await publish_escalation(app, EscalationEventKind.RESOLVED, resolved(pending))
    assert bobs.sequence < mine.sequence
    (event,) = await feed_events(stream, 1)
    assert event.sequence == mine.sequence
    assert event.type == "agent.escalation_resolved"
    assert event.kind == esc.ESCALATION_EVENT_KIND_RESOLVED
    assert event.escalation.decision == "skip"
    assert event.escalation.owner_id == "local"

    # All of the caller's escalations (no job filter): never bob's.
    everything = watch(escalations_stub)
    snapshot = (await everything.next()).snapshot
    assert all(e.owner_id == "local" for e in snapshot.pending)
    assert pending.escalation_id not in [e.escalation_id for e in snapshot.pending]
    stream.cancel()
    everything.cancel()


async def test_resume_replays_visible_events_after_the_cursor(
    app, jobs_stub, escalations_stub, project_id, bobs_job
) -> None:
    job = await submit(jobs_stub, project_id)

    first = await publish_escalation(app, EscalationEventKind.RAISED, escalation(job.job_id))
    await publish_escalation(app, EscalationEventKind.RAISED, escalation(bobs_job, "bob"))
    third = await publish_escalation(app, EscalationEventKind.RAISED, escalation(job.job_id))

    stream = watch(escalations_stub, job.job_id, after=first.sequence - 1)
    await stream.next()
    events = await feed_events(stream, 2)
    assert [e.sequence for e in events] == [first.sequence, third.sequence]
    stream.cancel()


async def test_heartbeats_and_cursor_errors(app, jobs_stub, escalations_stub, clock, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch(escalations_stub, job.job_id)
    latest = (await stream.next()).snapshot.latest_sequence
    await clock.advance(timedelta(seconds=15))
    message = await stream.next()
    assert message.heartbeat.latest_sequence >= latest
    stream.cancel()

    beyond = watch(escalations_stub, after=latest + 1000)
    error = await beyond.end()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_owners_job_is_not_found(escalations_stub, bobs_job) -> None:
    error = await watch(escalations_stub, bobs_job).end()
    assert error is not None
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason == "JOB_NOT_FOUND"


async def test_appending_for_a_missing_job_is_not_found(app) -> None:
    from cofounder_server.domain.errors import NotFound

    with pytest.raises(NotFound):
        await app.event_log.append_escalation_event(
            EscalationEventKind.RAISED, escalation(str(uuid.uuid4())), now=app.clock.now()
        )


async def test_job_watch_of_another_owners_job_is_not_found(jobs_stub, bobs_job) -> None:
    error = await watch_job(jobs_stub, bobs_job).end()
    assert error is not None
    assert error.code() == grpc.StatusCode.NOT_FOUND
