"""Streams are scoped like everything else, including streams opened before the object existed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2 as esc_pb
from cofounder.agent.v1 import escalation_service_pb2_grpc as esc_grpc
from cofounder_server.domain.escalations import Escalation, EscalationStatus, EscalationTrigger
from cofounder_server.domain.events import EscalationEventKind
from tests.auth.support import ALICE, BILLING, BOB, ONCALL, failure_of, submit_request
from tests.events.support import publish_escalation
from tests.support import RPC_TIMEOUT


async def first_message(call):
    return await asyncio.wait_for(call.read(), RPC_TIMEOUT)


@pytest.mark.parametrize(("intruder", "on_behalf_of"), [(BOB, None), (BILLING, "bob")])
async def test_watching_another_tenants_job_is_not_found_like_a_missing_one(
    jobs, project_id, intruder, on_behalf_of
) -> None:
    job = (
        await jobs.SubmitJob(submit_request(project_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT)
    ).job

    failures = []
    for job_id in (job.job_id, str(uuid.uuid4())):
        call = jobs.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id=job_id),
            metadata=intruder.metadata(on_behalf_of),
            timeout=RPC_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await first_message(call)
        failures.append(failure_of(caught.value))

    foreign, missing = failures
    assert foreign.code == missing.code == grpc.StatusCode.NOT_FOUND
    assert (foreign.reason, foreign.resource[0]) == (missing.reason, missing.resource[0])

    for caller, acting_for in ((ALICE, None), (BILLING, "alice"), (ONCALL, None)):
        call = jobs.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id=job.job_id), metadata=caller.metadata(acting_for)
        )
        assert (await first_message(call)).snapshot.job_id == job.job_id
        call.cancel()


def escalation_for(job) -> Escalation:
    return Escalation(
        escalation_id=str(uuid.uuid4()),
        job_id=job.job_id,
        owner_id=job.owner_id,
        status=EscalationStatus.PENDING,
        trigger=EscalationTrigger.AGENT_QUESTION,
        problem=f"question for {job.owner_id}",
        create_time=datetime.now(UTC),
    )


async def next_events(call) -> list[esc_pb.EscalationEvent]:
    while True:
        message = await asyncio.wait_for(call.read(), RPC_TIMEOUT)
        if message.HasField("events"):
            return list(message.events.events)


async def test_an_escalation_stream_opened_before_the_escalation_existed_never_shows_it_to_others(
    auth_app, auth_channel, jobs, project_id
) -> None:
    escalations = esc_grpc.EscalationServiceStub(auth_channel)
    watchers = {
        name: escalations.WatchEscalations(
            esc_pb.WatchEscalationsRequest(), metadata=caller.metadata(acting_for)
        )
        for name, caller, acting_for in (
            ("alice", ALICE, None),
            ("bob", BOB, None),
            ("bob-via-service", BILLING, "bob"),
            ("oncall", ONCALL, None),
        )
    }
    for call in watchers.values():
        assert (await first_message(call)).HasField("snapshot")

    # Only now do the jobs and their escalations come to exist: Alice's first, then Bob's.
    alices = (
        await jobs.SubmitJob(submit_request(project_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT)
    ).job
    raised_for_alice = await publish_escalation(auth_app, EscalationEventKind.RAISED, escalation_for(alices))
    bobs = (
        await jobs.SubmitJob(submit_request(project_id), metadata=BOB.metadata(), timeout=RPC_TIMEOUT)
    ).job
    raised_for_bob = await publish_escalation(auth_app, EscalationEventKind.RAISED, escalation_for(bobs))
    alice_id = raised_for_alice.escalation.escalation_id
    bob_id = raised_for_bob.escalation.escalation_id

    try:
        # Bob's streams see his escalation first: Alice's, raised earlier, was never sent to them.
        for name in ("bob", "bob-via-service"):
            seen = [event.escalation.escalation_id for event in await next_events(watchers[name])]
            assert seen[0] == bob_id, name
            assert alice_id not in seen, name
        assert (await next_events(watchers["alice"]))[0].escalation.escalation_id == alice_id
        seen_by_operator: list[str] = []
        while bob_id not in seen_by_operator:
            seen_by_operator += [e.escalation.escalation_id for e in await next_events(watchers["oncall"])]
        assert seen_by_operator.index(alice_id) < seen_by_operator.index(bob_id)
    finally:
        for call in watchers.values():
            call.cancel()


async def next_changes(call) -> list[pb.JobChange]:
    while True:
        message = await asyncio.wait_for(call.read(), RPC_TIMEOUT)
        if message.HasField("changes"):
            return list(message.changes.changes)


async def test_a_fleet_stream_shows_only_the_callers_jobs_and_counts_as_one_stream(
    auth_app, jobs, project_id
) -> None:
    async def submitted(caller) -> str:
        request = submit_request(project_id)
        return (await jobs.SubmitJob(request, metadata=caller.metadata(), timeout=RPC_TIMEOUT)).job.job_id

    alices = [await submitted(ALICE) for _ in range(3)]
    bobs_before = await submitted(BOB)
    watchers = {
        name: jobs.WatchJobs(pb.WatchJobsRequest(project_id=project_id), metadata=caller.metadata(acting_for))
        for name, caller, acting_for in (
            ("alice", ALICE, None),
            ("alice-via-service", BILLING, "alice"),
            ("oncall", ONCALL, None),
        )
    }
    try:
        snapshots = {name: (await first_message(call)).snapshot for name, call in watchers.items()}
        for name in ("alice", "alice-via-service"):
            # Bob's job is not there, not even as a count: the page holds Alice's statuses only.
            assert sorted(s.job_id for s in snapshots[name].statuses) == sorted(alices), name
            assert snapshots[name].last
        assert sorted(s.job_id for s in snapshots["oncall"].statuses) == sorted([*alices, bobs_before])
        # One stream each, however many jobs: Alice's own, and the service's acting for her.
        assert auth_app.security.gate.limits.streams.open_streams("alice") == 2

        bobs_after = await submitted(BOB)
        alices_after = await submitted(ALICE)
        for name in ("alice", "alice-via-service"):
            seen = [change.status.job_id for change in await next_changes(watchers[name])]
            assert seen == [alices_after], name
        seen_by_operator: list[str] = []
        while alices_after not in seen_by_operator:
            seen_by_operator += [c.status.job_id for c in await next_changes(watchers["oncall"])]
        assert seen_by_operator == [bobs_after, alices_after]
    finally:
        for call in watchers.values():
            call.cancel()
