"""Another tenant's job is NOT_FOUND exactly like a missing one, and never listed; operators see all."""

from __future__ import annotations

import uuid

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.auth.support import ALICE, BILLING, BOB, ONCALL, Failure, failure_of, submit_request
from tests.support import RPC_TIMEOUT

# Reads and mutations that name one job; each is called as the given caller on a job id.
BY_ID = {
    "GetJob": lambda stub, job_id, md: stub.GetJob(
        pb.GetJobRequest(job_id=job_id), metadata=md, timeout=RPC_TIMEOUT
    ),
    "GetJobStatus": lambda stub, job_id, md: stub.GetJobStatus(
        pb.GetJobStatusRequest(job_id=job_id), metadata=md, timeout=RPC_TIMEOUT
    ),
    "CancelJob": lambda stub, job_id, md: stub.CancelJob(
        pb.CancelJobRequest(job_id=job_id, reason="not mine"), metadata=md, timeout=RPC_TIMEOUT
    ),
}


async def submit(jobs, caller, project_id: str, on_behalf_of: str | None = None) -> job_pb2.Job:
    response = await jobs.SubmitJob(
        submit_request(project_id), metadata=caller.metadata(on_behalf_of), timeout=RPC_TIMEOUT
    )
    return response.job


async def failure(call) -> Failure:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return failure_of(caught.value)


def without_id(failure: Failure, job_id: str) -> Failure:
    """The failure with the job id masked, to compare a foreign job's answer with a missing one's."""
    resource = failure.resource and (failure.resource[0], failure.resource[1].replace(job_id, "<id>"))
    return Failure(
        failure.code,
        failure.message.replace(job_id, "<id>"),
        failure.reason,
        failure.retry_delay,
        failure.quota_subjects,
        failure.field_violations,
        resource,
    )


@pytest.mark.parametrize("rpc", sorted(BY_ID))
@pytest.mark.parametrize(
    ("intruder", "on_behalf_of"),
    [(BOB, None), (BILLING, "bob")],
    ids=["other-user", "service-for-other-user"],
)
async def test_another_tenants_job_is_indistinguishable_from_a_missing_one(
    jobs, project_id, rpc, intruder, on_behalf_of
) -> None:
    job = await submit(jobs, ALICE, project_id)
    missing_id = str(uuid.uuid4())

    foreign = await failure(BY_ID[rpc](jobs, job.job_id, intruder.metadata(on_behalf_of)))
    missing = await failure(BY_ID[rpc](jobs, missing_id, intruder.metadata(on_behalf_of)))

    assert foreign.code == grpc.StatusCode.NOT_FOUND
    assert without_id(foreign, job.job_id) == without_id(missing, missing_id)
    # ...and the intruder changed nothing.
    after = await jobs.GetJob(
        pb.GetJobRequest(job_id=job.job_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
    )
    assert after.job.status == job_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize("rpc", sorted(BY_ID))
@pytest.mark.parametrize(
    ("owner", "on_behalf_of"), [(ALICE, None), (BILLING, "alice")], ids=["user", "service-for-user"]
)
async def test_the_owner_and_operators_reach_the_job(jobs, project_id, rpc, owner, on_behalf_of) -> None:
    for caller, acting_for in ((owner, on_behalf_of), (ONCALL, None)):
        job = await submit(jobs, ALICE, project_id)
        await BY_ID[rpc](jobs, job.job_id, caller.metadata(acting_for))


async def test_lists_hold_only_the_callers_jobs_and_operators_see_all(jobs, project_id) -> None:
    alices = await submit(jobs, ALICE, project_id)
    bobs = await submit(jobs, BOB, project_id)
    carols = await submit(jobs, BILLING, project_id, on_behalf_of="carol")

    async def listed(caller, on_behalf_of: str | None = None) -> set[str]:
        response = await jobs.ListJobs(
            pb.ListJobsRequest(project_id=project_id),
            metadata=caller.metadata(on_behalf_of),
            timeout=RPC_TIMEOUT,
        )
        return {job.job_id for job in response.jobs}

    assert await listed(ALICE) == {alices.job_id}
    assert await listed(BOB) == {bobs.job_id}
    assert await listed(BILLING, "carol") == {carols.job_id}
    assert await listed(BILLING, "alice") == {alices.job_id}
    assert await listed(BILLING, "dave") == set()
    assert await listed(ONCALL) == {alices.job_id, bobs.job_id, carols.job_id}


async def test_a_page_token_works_only_for_the_principal_it_was_given_to(jobs, project_id) -> None:
    for _ in range(2):
        await submit(jobs, ALICE, project_id)
    first = await jobs.ListJobs(
        pb.ListJobsRequest(project_id=project_id, page_size=1), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
    )
    assert first.next_page_token

    refused = await failure(
        jobs.ListJobs(
            pb.ListJobsRequest(project_id=project_id, page_size=1, page_token=first.next_page_token),
            metadata=BOB.metadata(),
            timeout=RPC_TIMEOUT,
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_request_ids_are_per_owner(jobs, project_id) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    alices = await jobs.SubmitJob(
        submit_request(project_id, request_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
    )
    bobs = await jobs.SubmitJob(
        submit_request(project_id, request_id), metadata=BOB.metadata(), timeout=RPC_TIMEOUT
    )

    # Bob's retry key never replays (or reveals) Alice's job.
    assert bobs.job.job_id != alices.job.job_id
    assert bobs.job.owner_id == "bob"


async def test_an_operator_steers_any_owners_job(jobs, project_id) -> None:
    job = await submit(jobs, BILLING, project_id, on_behalf_of="carol")

    cancelled = await jobs.CancelJob(
        pb.CancelJobRequest(job_id=job.job_id, reason="on-call"),
        metadata=ONCALL.metadata(),
        timeout=RPC_TIMEOUT,
    )

    assert cancelled.job.status == job_pb2.JOB_STATUS_CANCELLED
    assert cancelled.job.owner_id == "carol"
