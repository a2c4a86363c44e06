"""Every implemented RPC answers bad input with INVALID_ARGUMENT naming the field, and stores nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_service_pb2 as esc
from cofounder.agent.v1 import job_pb2
from tests.integration.test_jobs import submit, submit_request
from tests.support import RPC_TIMEOUT

VALID_ID = "00000000-0000-4000-8000-000000000000"


def violations_of(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry rich details"
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    return {v.field: v.description for v in bad_request.field_violations}


def config_of(value: Any) -> struct_pb2.Struct:
    config = struct_pb2.Struct()
    config.update(value)
    return config


def bad_submits() -> list[tuple[str, dict[str, Any], str]]:
    agent = job_pb2.AgentSpec
    return [
        ("empty project", {"project_id": ""}, "project_id"),
        ("project with spaces", {"project_id": "my project"}, "project_id"),
        ("oversized project", {"project_id": "p" * 129}, "project_id"),
        ("empty goal", {"goal": ""}, "goal"),
        ("blank goal", {"goal": "   \n"}, "goal"),
        ("oversized goal", {"goal": "g" * 10_001}, "goal"),
        ("NUL in goal", {"goal": "a\x00b"}, "goal"),
        ("zero budget", {"daily_budget_microdollars": 0}, "daily_budget_microdollars"),
        ("negative budget", {"daily_budget_microdollars": -5}, "daily_budget_microdollars"),
        ("absurd budget", {"daily_budget_microdollars": 10**15}, "daily_budget_microdollars"),
        ("no brain", {"agent": agent(brain="")}, "agent.brain"),
        ("bad brain", {"agent": agent(brain="Scripted!")}, "agent.brain"),
        ("oversized model", {"agent": agent(brain="scripted", model="m" * 129)}, "agent.model"),
        (
            "NUL in config",
            {"agent": agent(brain="scripted", config=config_of({"k": "a\x00"}))},
            "agent.config",
        ),
        (
            "oversized config",
            {"agent": agent(brain="scripted", config=config_of({"k": "x" * 300_000}))},
            "agent.config",
        ),
        ("unknown brain", {"agent": agent(brain="no-such-brain")}, "agent.brain"),
        ("request id with spaces", {"request_id": "a b"}, "request_id"),
        ("oversized request id", {"request_id": "r" * 129}, "request_id"),
    ]


async def count_jobs(stub) -> int:
    total, token = 0, ""
    while True:
        page = await stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=RPC_TIMEOUT)
        total += len(page.jobs)
        token = page.next_page_token
        if not token:
            return total


@pytest.mark.parametrize(("case", "changes", "field"), bad_submits(), ids=[c[0] for c in bad_submits()])
async def test_submit_rejects_bad_fields(jobs_stub, project_id, case, changes, field) -> None:
    before = await count_jobs(jobs_stub)
    request = submit_request(project_id)
    for name, value in changes.items():
        if isinstance(value, job_pb2.AgentSpec):
            request.agent.CopyFrom(value)
        else:
            setattr(request, name, value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.SubmitJob(request, timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations_of(caught.value)
    assert await count_jobs(jobs_stub) == before


async def test_submit_reports_every_bad_field_at_once(jobs_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(), timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations_of(caught.value)) == {"project_id", "goal", "daily_budget_microdollars", "agent"}


async def test_submit_rejects_bad_labels(jobs_stub, project_id) -> None:
    before = await count_jobs(jobs_stub)
    cases = [{"Bad Key": "v"}, {"k": "v" * 257}, {f"k{i}": "v" for i in range(33)}, {"k": "\x01"}]
    for labels in cases:
        request = submit_request(project_id)
        request.labels.clear()
        request.labels.update(labels)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs_stub.SubmitJob(request, timeout=RPC_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, labels
        assert all(f.startswith("labels") for f in violations_of(caught.value))
    assert await count_jobs(jobs_stub) == before


BAD_IDS = [
    "",
    "not-a-uuid",
    "0A1B2C3D-0000-4000-8000-00000000ABCD",
    VALID_ID + "0",
    "x" * 10_000,
    "../../etc/passwd",
]


@pytest.mark.parametrize("job_id", BAD_IDS)
@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("GetJob", pb.GetJobRequest),
        ("CancelJob", pb.CancelJobRequest),
        ("GetJobStatus", pb.GetJobStatusRequest),
        ("WakeAgent", pb.WakeAgentRequest),
    ],
)
async def test_malformed_job_ids_are_invalid(jobs_stub, method, request_type, job_id) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(jobs_stub, method)(request_type(job_id=job_id), timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id" in violations_of(caught.value)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "garbage"}, "page_token"),
        ({"page_token": "eyJ0IjoxfQ"}, "page_token"),
        ({"page_token": "t" * 5000}, "page_token"),
        ({"statuses": [job_pb2.JOB_STATUS_UNSPECIFIED]}, "statuses[0]"),
        ({"statuses": [job_pb2.JOB_STATUS_QUEUED, 42]}, "statuses[1]"),
        ({"project_id": "bad project"}, "project_id"),
    ],
)
async def test_list_rejects_bad_requests(jobs_stub, request_fields, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.ListJobs(pb.ListJobsRequest(**request_fields), timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations_of(caught.value)


async def test_list_clamps_oversized_page_size(jobs_stub, project_id) -> None:
    await submit(jobs_stub, project_id)
    listed = await jobs_stub.ListJobs(
        pb.ListJobsRequest(project_id=project_id, page_size=2**31 - 1), timeout=RPC_TIMEOUT
    )
    assert len(listed.jobs) == 1


async def test_cancel_rejects_bad_reason_and_request_id_and_keeps_the_job(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    for fields, field in (
        ({"reason": "r" * 1001}, "reason"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id, **fields), timeout=RPC_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations_of(caught.value)

    fetched = (await jobs_stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job
    assert fetched.status == job_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"top_up_microdollars": -1}, "top_up_microdollars"),
        ({"top_up_microdollars": 10**12 + 1}, "top_up_microdollars"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "r" * 129}, "request_id"),
    ],
)
async def test_wake_rejects_bad_top_ups_and_request_ids_and_changes_nothing(
    jobs_stub, project_id, request_fields, field
) -> None:
    job = await submit(jobs_stub, project_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.WakeAgent(
            pb.WakeAgentRequest(job_id=job.job_id, **request_fields), timeout=RPC_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations_of(caught.value)
    fetched = (await jobs_stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job
    assert fetched == job


async def test_wake_reports_every_bad_field_at_once(jobs_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.WakeAgent(
            pb.WakeAgentRequest(job_id="nope", request_id="a b", top_up_microdollars=-5), timeout=RPC_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations_of(caught.value)) == {"job_id", "request_id", "top_up_microdollars"}


async def test_waking_an_agent_that_is_not_sleeping_is_failed_precondition(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)  # queued: its agent has not started
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.WakeAgent(
            pb.WakeAgentRequest(job_id=job.job_id, top_up_microdollars=5), timeout=RPC_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert info.reason == "AGENT_NOT_SLEEPING"


async def test_waking_an_unknown_job_is_not_found(jobs_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.WakeAgent(pb.WakeAgentRequest(job_id=VALID_ID), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "string_field"),
    [
        ("SubmitJob", 1),
        ("GetJob", 1),
        ("ListJobs", 2),
        ("CancelJob", 1),
        ("GetJobStatus", 1),
        ("WakeAgent", 1),
    ],
)
async def test_undecodable_request_bytes_are_invalid_argument_not_internal(
    channel, method, string_field
) -> None:
    # A string field holding bytes that are not UTF-8: protobuf refuses to parse it.
    raw = bytes([string_field << 3 | 2, 2, 0xFF, 0xFE])
    call = channel.unary_unary(
        f"/cofounder.agent.v1.AgentControlService/{method}",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_request_is_resource_exhausted(jobs_stub, project_id) -> None:
    request = submit_request(project_id, goal="g" * (2 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.SubmitJob(request, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("GetEscalation", esc.GetEscalationRequest(escalation_id=VALID_ID)),
        ("ResolveEscalation", esc.ResolveEscalationRequest(escalation_id=VALID_ID, decision="yes")),
    ],
)
async def test_an_unknown_escalation_is_not_found(escalations_stub, method, message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(escalations_stub, method)(message, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        ("GetEscalation", esc.GetEscalationRequest(), "escalation_id"),
        ("GetEscalation", esc.GetEscalationRequest(escalation_id="E" + VALID_ID[1:]), "escalation_id"),
        ("ListEscalations", esc.ListEscalationsRequest(job_id="not-a-uuid"), "job_id"),
        ("ListEscalations", esc.ListEscalationsRequest(page_size=-1), "page_size"),
        ("ListEscalations", esc.ListEscalationsRequest(statuses=[0]), "statuses[0]"),
        ("ListEscalations", esc.ListEscalationsRequest(statuses=[99]), "statuses[0]"),
        ("ListEscalations", esc.ListEscalationsRequest(page_token="not a token"), "page_token"),
        ("ResolveEscalation", esc.ResolveEscalationRequest(decision="yes"), "escalation_id"),
        ("ResolveEscalation", esc.ResolveEscalationRequest(escalation_id=VALID_ID), "decision"),
        (
            "ResolveEscalation",
            esc.ResolveEscalationRequest(escalation_id=VALID_ID, decision="y" * 129),
            "decision",
        ),
        (
            "ResolveEscalation",
            esc.ResolveEscalationRequest(escalation_id=VALID_ID, decision="yes", guidance="g" * 10_001),
            "guidance",
        ),
        (
            "ResolveEscalation",
            esc.ResolveEscalationRequest(escalation_id=VALID_ID, decision="yes", guidance="bell\a"),
            "guidance",
        ),
        (
            "ResolveEscalation",
            esc.ResolveEscalationRequest(escalation_id=VALID_ID, decision="yes", request_id="r" * 129),
            "request_id",
        ),
    ],
)
async def test_bad_escalation_requests_name_the_field(escalations_stub, method, message, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(escalations_stub, method)(message, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations_of(caught.value)


async def stream_error(call) -> grpc.aio.AioRpcError:
    """The error a watch ends with before sending anything."""
    try:
        async for _ in call:
            pytest.fail("the stream must fail before its first message")
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail("the stream ended OK")


@pytest.mark.parametrize("job_id", BAD_IDS)
async def test_watches_reject_malformed_job_ids(jobs_stub, escalations_stub, job_id) -> None:
    calls = [jobs_stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id), timeout=RPC_TIMEOUT)]
    if job_id:  # an empty job_id is valid for WatchEscalations: all of the caller's escalations
        calls.append(
            escalations_stub.WatchEscalations(esc.WatchEscalationsRequest(job_id=job_id), timeout=RPC_TIMEOUT)
        )
    for call in calls:
        error = await stream_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "job_id" in violations_of(error)


async def test_watches_reject_negative_cursors(jobs_stub, escalations_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    for call in (
        jobs_stub.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id=job.job_id, after_sequence=-1), timeout=RPC_TIMEOUT
        ),
        escalations_stub.WatchEscalations(
            esc.WatchEscalationsRequest(after_sequence=-5), timeout=RPC_TIMEOUT
        ),
    ):
        error = await stream_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "after_sequence" in violations_of(error)


async def test_watches_reject_cursors_beyond_the_newest(jobs_stub, escalations_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)  # its log holds one event: QUEUED
    for call in (
        jobs_stub.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id=job.job_id, after_sequence=2), timeout=RPC_TIMEOUT
        ),
        escalations_stub.WatchEscalations(
            esc.WatchEscalationsRequest(after_sequence=2**62), timeout=RPC_TIMEOUT
        ),
    ):
        error = await stream_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "after_sequence" in violations_of(error)


async def test_watches_of_unknown_jobs_are_not_found(jobs_stub, escalations_stub) -> None:
    for call in (
        jobs_stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=VALID_ID), timeout=RPC_TIMEOUT),
        escalations_stub.WatchEscalations(esc.WatchEscalationsRequest(job_id=VALID_ID), timeout=RPC_TIMEOUT),
    ):
        assert (await stream_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_undecodable_watch_requests_are_invalid_argument(channel) -> None:
    raw = bytes([1 << 3 | 2, 2, 0xFF, 0xFE])  # job_id holding bytes that are not UTF-8
    for path in (
        "/cofounder.agent.v1.AgentControlService/WatchJobEvents",
        "/cofounder.agent.v1.EscalationService/WatchEscalations",
    ):
        call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        assert (await stream_error(call(raw, timeout=RPC_TIMEOUT))).code() == grpc.StatusCode.INVALID_ARGUMENT
