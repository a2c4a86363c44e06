"""SubmitJob, GetJob, ListJobs and CancelJob against a real server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.support import RPC_TIMEOUT


def submit_request(project_id: str, **overrides: object) -> pb.SubmitJobRequest:
    config = struct_pb2.Struct()
    config.update({"turns": [{"text": "hello"}], "loop": True})
    request = pb.SubmitJobRequest(
        project_id=project_id,
        goal="Ship the landing page",
        daily_budget_microdollars=5_000_000,
        agent=job_pb2.AgentSpec(brain="scripted", model="claude-sonnet-4", config=config),
        labels={"team": "growth"},
    )
    for name, value in overrides.items():
        setattr(request, name, value)
    return request


async def submit(stub, project_id: str, **overrides: object) -> job_pb2.Job:
    response = await stub.SubmitJob(submit_request(project_id, **overrides), timeout=RPC_TIMEOUT)
    return response.job


async def test_submit_stores_a_queued_job_that_get_returns(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)

    assert job.status == job_pb2.JOB_STATUS_QUEUED
    assert job.owner_id == "local"
    assert job.project_id == project_id
    assert job.goal == "Ship the landing page"
    assert job.daily_budget_microdollars == 5_000_000
    assert job.agent.brain == "scripted"
    assert job.agent.config["loop"] is True
    assert dict(job.labels) == {"team": "growth"}
    assert job.create_time.seconds > 0
    assert not job.HasField("end_time")

    fetched = (await jobs_stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job
    assert fetched == job


async def test_submit_with_same_request_id_returns_the_first_job(jobs_stub, project_id) -> None:
    first, second = await asyncio.gather(
        submit(jobs_stub, project_id, request_id="retry-1"),
        submit(jobs_stub, project_id, request_id="retry-1"),
    )
    third = await submit(jobs_stub, project_id, request_id="retry-1")

    assert first.job_id == second.job_id == third.job_id
    listed = await jobs_stub.ListJobs(pb.ListJobsRequest(project_id=project_id), timeout=RPC_TIMEOUT)
    assert [j.job_id for j in listed.jobs] == [first.job_id]


async def test_reusing_a_request_id_for_another_request_is_already_exists(jobs_stub, project_id) -> None:
    await submit(jobs_stub, project_id, request_id="retry-2")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(jobs_stub, project_id, request_id="retry-2", goal="A different goal")

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await jobs_stub.ListJobs(pb.ListJobsRequest(project_id=project_id), timeout=RPC_TIMEOUT)
    assert len(listed.jobs) == 1
    assert listed.jobs[0].goal == "Ship the landing page"


async def test_list_pages_newest_first_without_gaps_or_repeats(jobs_stub, clock, project_id) -> None:
    created = []
    for i in range(7):
        created.append(await submit(jobs_stub, project_id, goal=f"goal {i}"))
        await clock.advance(timedelta(milliseconds=1))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await jobs_stub.ListJobs(
            pb.ListJobsRequest(project_id=project_id, page_size=3, page_token=token), timeout=RPC_TIMEOUT
        )
        pages += 1
        assert len(page.jobs) <= 3
        seen.extend(j.job_id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert seen == [j.job_id for j in reversed(created)]


async def test_list_filters_by_status(jobs_stub, project_id) -> None:
    kept = await submit(jobs_stub, project_id)
    cancelled = await submit(jobs_stub, project_id)
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=cancelled.job_id), timeout=RPC_TIMEOUT)

    queued = await jobs_stub.ListJobs(
        pb.ListJobsRequest(project_id=project_id, statuses=[job_pb2.JOB_STATUS_QUEUED]), timeout=RPC_TIMEOUT
    )
    done = await jobs_stub.ListJobs(
        pb.ListJobsRequest(
            project_id=project_id, statuses=[job_pb2.JOB_STATUS_CANCELLED, job_pb2.JOB_STATUS_READY]
        ),
        timeout=RPC_TIMEOUT,
    )

    assert [j.job_id for j in queued.jobs] == [kept.job_id]
    assert [j.job_id for j in done.jobs] == [cancelled.job_id]


async def test_page_token_is_bound_to_its_filters(jobs_stub, project_id) -> None:
    for _ in range(3):
        await submit(jobs_stub, project_id)
    page = await jobs_stub.ListJobs(
        pb.ListJobsRequest(project_id=project_id, page_size=1), timeout=RPC_TIMEOUT
    )
    assert page.next_page_token

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.ListJobs(
            pb.ListJobsRequest(project_id=project_id + "x", page_size=1, page_token=page.next_page_token),
            timeout=RPC_TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_is_terminal_and_idempotent(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)

    first = (
        await jobs_stub.CancelJob(
            pb.CancelJobRequest(job_id=job.job_id, reason="wrong goal"), timeout=RPC_TIMEOUT
        )
    ).job
    again = (
        await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id, reason="other"), timeout=RPC_TIMEOUT)
    ).job

    assert first.status == job_pb2.JOB_STATUS_CANCELLED
    assert first.outcome == job_pb2.JOB_OUTCOME_CANCELLED
    assert first.outcome_detail == "wrong goal"
    assert first.HasField("end_time")
    assert again == first
    fetched = (await jobs_stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job
    assert fetched == first


async def test_cancel_with_a_request_id_replays_it_and_refuses_its_reuse(jobs_stub, project_id) -> None:
    import uuid

    job, other = await submit(jobs_stub, project_id), await submit(jobs_stub, project_id)
    key = f"cancel-{uuid.uuid4()}"
    missing = "00000000-0000-4000-8000-000000000000"

    async def cancel(job_id: str, reason: str = "wrong goal") -> job_pb2.Job:
        request = pb.CancelJobRequest(job_id=job_id, request_id=key, reason=reason)
        return (await jobs_stub.CancelJob(request, timeout=RPC_TIMEOUT)).job

    # A refused cancel keeps no key: the key is still free for the real one.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cancel(missing)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    first, retried = await asyncio.gather(cancel(job.job_id), cancel(job.job_id))
    assert first == retried
    assert (first.status, first.outcome_detail) == (job_pb2.JOB_STATUS_CANCELLED, "wrong goal")
    assert await cancel(job.job_id) == first
    status = await jobs_stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    assert status.status.latest_event_sequence == 2  # queued, then cancelled once

    for reused in (cancel(other.job_id), cancel(job.job_id, reason="another reason")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reused
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    fetched = (await jobs_stub.GetJob(pb.GetJobRequest(job_id=other.job_id), timeout=RPC_TIMEOUT)).job
    assert fetched.status == job_pb2.JOB_STATUS_QUEUED


async def test_unknown_job_is_not_found_with_resource_details(jobs_stub) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    missing = "00000000-0000-4000-8000-000000000000"
    for call in (
        jobs_stub.GetJob(pb.GetJobRequest(job_id=missing), timeout=RPC_TIMEOUT),
        jobs_stub.CancelJob(pb.CancelJobRequest(job_id=missing), timeout=RPC_TIMEOUT),
        jobs_stub.GetJobStatus(pb.GetJobStatusRequest(job_id=missing), timeout=RPC_TIMEOUT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ResourceInfo()
        assert any(d.Unpack(info) for d in status.details)
        assert info.resource_type == "job"
        assert info.resource_name == missing
