"""Identifiers are matched whole: a valid id with a newline, CR, NUL, line separator or trailing
space appended is INVALID_ARGUMENT naming the field, for every identifier an RPC takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder.agent.v1 import job_pb2
from tests.integration.test_invalid_input import VALID_ID, count_jobs, stream_error, violations_of
from tests.integration.test_jobs import submit, submit_request
from tests.support import RPC_TIMEOUT

SUFFIXES = {
    "newline": "\n",
    "carriage-return": "\r",
    "nul": "\x00",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "trailing-space": " ",
}
RAW_CONTROLS = ("\n", "\r", "\x00", "\u2028", "\u2029")


@dataclass(frozen=True)
class Ctx:
    """What a case needs: both stubs, an existing job, a project and a real page token."""

    jobs: Any
    escalations: Any
    job: job_pb2.Job
    project_id: str
    page_token: str


Case = Callable[[Ctx, str], Awaitable[Any]]


def unary(method: str, build: Callable[[Ctx, str], Any]) -> Case:
    async def call(ctx: Ctx, suffix: str) -> Any:
        stub = ctx.escalations if isinstance(build(ctx, ""), esc_requests) else ctx.jobs
        return await getattr(stub, method)(build(ctx, suffix), timeout=RPC_TIMEOUT)

    return call


def stream(method: str, build: Callable[[Ctx, str], Any]) -> Case:
    async def call(ctx: Ctx, suffix: str) -> Any:
        stub = ctx.escalations if isinstance(build(ctx, ""), esc_requests) else ctx.jobs
        watch = getattr(stub, method)(build(ctx, suffix), timeout=RPC_TIMEOUT)
        if suffix:
            raise await stream_error(watch)
        await watch.read()  # a valid watch opens: its first message is a snapshot
        watch.cancel()

    return call


esc_requests = (
    esc.GetEscalationRequest,
    esc.ListEscalationsRequest,
    esc.ResolveEscalationRequest,
    esc.WatchEscalationsRequest,
)


def submit_with(**changes: Any) -> Callable[[Ctx, str], pb.SubmitJobRequest]:
    def build(ctx: Ctx, suffix: str) -> pb.SubmitJobRequest:
        request = submit_request(ctx.project_id)
        for name, value in changes.items():
            if name == "labels":
                request.labels.clear()
                request.labels.update({value + suffix: "v"})
            elif name == "brain":
                request.agent.brain = value + suffix
            else:
                setattr(request, name, value(ctx) + suffix)
        return request

    return build


CASES: dict[str, tuple[Case, str]] = {
    "GetJob.job_id": (unary("GetJob", lambda c, s: pb.GetJobRequest(job_id=c.job.job_id + s)), "job_id"),
    "CancelJob.job_id": (
        unary("CancelJob", lambda c, s: pb.CancelJobRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
    "CancelJob.request_id": (
        unary(
            "CancelJob",
            lambda c, s: pb.CancelJobRequest(job_id=c.job.job_id, request_id="c-" + c.project_id + s),
        ),
        "request_id",
    ),
    "GetJobStatus.job_id": (
        unary("GetJobStatus", lambda c, s: pb.GetJobStatusRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
    "WakeAgent.job_id": (
        unary("WakeAgent", lambda c, s: pb.WakeAgentRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
    "WakeAgent.request_id": (
        unary(
            "WakeAgent",
            lambda c, s: pb.WakeAgentRequest(job_id=c.job.job_id, request_id="w-" + c.project_id + s),
        ),
        "request_id",
    ),
    "WatchJobEvents.job_id": (
        stream("WatchJobEvents", lambda c, s: pb.WatchJobEventsRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
    "SubmitJob.project_id": (
        unary("SubmitJob", submit_with(project_id=lambda c: c.project_id)),
        "project_id",
    ),
    "SubmitJob.request_id": (
        unary("SubmitJob", submit_with(request_id=lambda c: "s-" + c.project_id)),
        "request_id",
    ),
    "SubmitJob.labels": (unary("SubmitJob", submit_with(labels="team")), "labels['team"),
    "SubmitJob.agent.brain": (unary("SubmitJob", submit_with(brain="scripted")), "agent.brain"),
    "ListJobs.project_id": (
        unary("ListJobs", lambda c, s: pb.ListJobsRequest(project_id=c.project_id + s)),
        "project_id",
    ),
    "ListJobs.page_token": (
        unary(
            "ListJobs",
            lambda c, s: pb.ListJobsRequest(
                project_id=c.project_id, page_size=1, page_token=c.page_token + s
            ),
        ),
        "page_token",
    ),
    "GetEscalation.escalation_id": (
        unary("GetEscalation", lambda c, s: esc.GetEscalationRequest(escalation_id=VALID_ID + s)),
        "escalation_id",
    ),
    "ListEscalations.job_id": (
        unary("ListEscalations", lambda c, s: esc.ListEscalationsRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
    "ResolveEscalation.escalation_id": (
        unary(
            "ResolveEscalation",
            lambda c, s: esc.ResolveEscalationRequest(escalation_id=VALID_ID + s, decision="yes"),
        ),
        "escalation_id",
    ),
    "ResolveEscalation.request_id": (
        unary(
            "ResolveEscalation",
            lambda c, s: esc.ResolveEscalationRequest(
                escalation_id=VALID_ID, request_id="e-1" + s, decision="yes"
            ),
        ),
        "request_id",
    ),
    "WatchEscalations.job_id": (
        stream("WatchEscalations", lambda c, s: esc.WatchEscalationsRequest(job_id=c.job.job_id + s)),
        "job_id",
    ),
}


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def ctx(jobs_stub, escalations_stub, project_id) -> Ctx:
    job = await submit(jobs_stub, project_id)
    await submit(jobs_stub, project_id)
    page = await jobs_stub.ListJobs(
        pb.ListJobsRequest(project_id=project_id, page_size=1), timeout=RPC_TIMEOUT
    )
    assert page.next_page_token
    return Ctx(jobs_stub, escalations_stub, job, project_id, page.next_page_token)


@pytest.mark.parametrize("suffix", SUFFIXES.values(), ids=SUFFIXES.keys())
@pytest.mark.parametrize("case", CASES, ids=CASES.keys())
async def test_an_identifier_with_anything_appended_is_invalid(ctx: Ctx, case: str, suffix: str) -> None:
    call, field = CASES[case]

    # The unsuffixed value is accepted (or reaches the RPC: an escalation id no escalation
    # has is NOT_FOUND, waking a queued job FAILED_PRECONDITION).
    assert await code_of(call(ctx, "")) in (
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(ctx, suffix)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(name.startswith(field) for name in violations_of(caught.value)), violations_of(caught.value)
    message = caught.value.details() or ""
    assert not any(control in message for control in RAW_CONTROLS), repr(message)
    assert not any(control in name for name in violations_of(caught.value) for control in RAW_CONTROLS), (
        violations_of(caught.value)
    )


async def test_a_refused_submit_stores_nothing(jobs_stub, project_id) -> None:
    before = await count_jobs(jobs_stub)
    for suffix in SUFFIXES.values():
        for changes in ({"project_id": project_id + suffix}, {"request_id": "req" + suffix}):
            request = submit_request(project_id)
            for name, value in changes.items():
                setattr(request, name, value)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs_stub.SubmitJob(request, timeout=RPC_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await count_jobs(jobs_stub) == before
