"""Errors: every failure is a CofounderError with the server's rich details decoded."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from client_fakes import RPC_TIMEOUT, Harness, WatchPlan, drain, error_info, event, new_job, rich_status
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder_client import (
    Client,
    CofounderError,
    DeadlineExceededError,
    ErrorDetails,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
)


async def test_invalid_argument_decodes_field_violations_and_reason(client: Client) -> None:
    with pytest.raises(CofounderError) as caught:
        await client.submit_job(project_id="p", goal="", daily_budget_microdollars=0, agent={"brain": "b"})

    error = caught.value
    assert isinstance(error, InvalidArgumentError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid SubmitJobRequest"
    assert error.field_violations == [
        ("goal", "must not be empty"),
        ("daily_budget_microdollars", "must be positive"),
    ]
    assert error.reason == "INVALID_ARGUMENT"
    assert error.details.error_info is not None
    assert error.details.error_info.domain == "cofounder.dev"
    assert not error.retryable
    assert str(error) == "INVALID_ARGUMENT: invalid SubmitJobRequest"
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


async def test_not_found_decodes_error_info_and_resource_info(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.get_job("missing")

    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "JOB_NOT_FOUND"
    assert error.details.error_info is not None
    assert dict(error.details.error_info.metadata) == {"job_id": "missing"}
    assert error.details.resource_info is not None
    assert error.details.resource_info.resource_name == "missing"
    assert error.details.bad_request is None
    assert error.field_violations == []


async def test_retry_info_marks_the_error_retryable(
    make_client: Callable[..., Client], harness: Harness
) -> None:
    harness.recorder.failures["GetJob"].append(
        rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many requests",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)),
        )
    )
    with pytest.raises(CofounderError) as caught:
        await make_client().get_job("x")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_delay == 2.5
    assert caught.value.retryable


async def test_an_error_without_details_still_has_code_and_message(client: Client, harness: Harness) -> None:
    harness.recorder.failures["WakeAgent"].append(
        rich_status(grpc.StatusCode.FAILED_PRECONDITION, "agent is working")
    )
    with pytest.raises(FailedPreconditionError) as caught:
        await client.wake_agent("x")
    assert caught.value.message == "agent is working"
    assert caught.value.details == ErrorDetails()
    assert caught.value.reason is None
    assert caught.value.retry_delay is None


async def test_client_side_deadline_is_a_cofounder_error(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[], hang=True)
    with pytest.raises(DeadlineExceededError) as caught:
        await drain(client.watch_job_events(job.job_id, timeout=0.3))
    assert caught.value.retryable


async def test_unreachable_server_is_unavailable() -> None:
    # Port 1 on loopback refuses connections; no server is involved.
    async with Client("127.0.0.1:1", timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.get_job("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.retryable


async def test_a_stream_failing_mid_iteration_raises_cofounder_error(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, 1), event(job.job_id, 2)],
        end_error=rich_status(
            grpc.StatusCode.OUT_OF_RANGE, "cursor too old", error_info("CURSOR_EXPIRED", oldest_sequence="40")
        ),
    )
    received: list[control_pb2.WatchJobEventsResponse] = []
    with pytest.raises(OutOfRangeError) as caught:
        await drain(client.watch_job_events(job.job_id, after_sequence=0), into=received)
    assert [m.WhichOneof("kind") for m in received] == ["snapshot", "events", "heartbeat", "events"]
    assert caught.value.reason == "CURSOR_EXPIRED"
    assert caught.value.details.error_info is not None
    assert caught.value.details.error_info.metadata["oldest_sequence"] == "40"


def _trailer(status: status_pb2.Status) -> list[tuple[str, str | bytes]]:
    return [("grpc-status-details-bin", status.SerializeToString())]


def test_details_keep_unknown_kinds_and_the_first_of_each_kind() -> None:
    first, second = error_info("FIRST"), error_info("SECOND")
    help_ = error_details_pb2.Help(links=[error_details_pb2.Help.Link(url="https://example.invalid")])
    status = status_pb2.Status(code=code_pb2.ABORTED, message="m")
    for detail in (first, help_, second):
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)

    details = ErrorDetails.from_trailing_metadata(_trailer(status), grpc.StatusCode.ABORTED)

    assert details.error_info == first
    assert len(details.other) == 1
    assert details.other[0].Is(error_details_pb2.Help.DESCRIPTOR)


def test_a_trailer_that_disagrees_with_the_call_or_does_not_parse_is_ignored() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="m")
    packed = any_pb2.Any()
    packed.Pack(error_info("X"))
    status.details.append(packed)

    assert (
        ErrorDetails.from_trailing_metadata(_trailer(status), grpc.StatusCode.NOT_FOUND).error_info
        is not None
    )
    assert ErrorDetails.from_trailing_metadata(_trailer(status), grpc.StatusCode.INTERNAL) == ErrorDetails()
    garbage = [("grpc-status-details-bin", b"\xff\xff\xff")]
    assert ErrorDetails.from_trailing_metadata(garbage, grpc.StatusCode.NOT_FOUND) == ErrorDetails()
    assert ErrorDetails.from_trailing_metadata(None, grpc.StatusCode.NOT_FOUND) == ErrorDetails()


def test_every_subclass_is_a_cofounder_error() -> None:
    import cofounder_client

    subclasses = [
        obj
        for name, obj in vars(cofounder_client).items()
        if name.endswith("Error") and isinstance(obj, type) and obj is not CofounderError
    ]
    assert len(subclasses) >= 10
    assert all(issubclass(cls, CofounderError) for cls in subclasses)
