"""SyncClient without a server: grpc_testing plays the server's part, call by call.

The test takes each call the client makes from a ``grpc_testing`` channel and answers it as
scripted (a response, a rich error, a stream that drops mid-way), so behaviour that a real
server shows only by accident is checked exactly. grpc_testing drives synchronous channels
only; the asyncio client and server are tested against real in-process servers instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_service_pb2, event_pb2, job_pb2
from cofounder_client import (
    CofounderError,
    FleetSnapshot,
    InvalidArgumentError,
    NotFoundError,
    SyncClient,
    UnavailableError,
)

T = TypeVar("T")
WAIT = 10.0
JOB_ID = "0b8f0d6e-2c4f-4f7e-9a51-0d1c2b3a4f5e"
CONTROL = control_pb2.DESCRIPTOR.services_by_name["AgentControlService"]
ESCALATIONS = escalation_service_pb2.DESCRIPTOR.services_by_name["EscalationService"]
DETAILS_TRAILER = "grpc-status-details-bin"


class RecordingChannel:
    """Hands every call to a grpc_testing channel and records the deadline it was given
    (grpc_testing itself drops it)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.timeouts: list[tuple[str, float | None]] = []

    def unary_unary(self, method: str, **kwargs: Any) -> Callable[..., Any]:
        return self._recorded(method, self.channel.unary_unary(method, **kwargs))

    def unary_stream(self, method: str, **kwargs: Any) -> Callable[..., Any]:
        return self._recorded(method, self.channel.unary_stream(method, **kwargs))

    def _recorded(self, method: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def invoke(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.timeouts.append((method.rsplit("/", 1)[1], timeout))
            return call(request, timeout=timeout, metadata=metadata)

        return invoke


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel(grpc_testing.channel([CONTROL, ESCALATIONS], grpc_testing.strict_real_time()))


@pytest.fixture
def client(channel: RecordingChannel) -> Iterator[SyncClient]:
    with SyncClient(channel=channel, token="t0k3n", timeout=7.5) as sync_client:  # type: ignore[arg-type]
        yield sync_client


def in_thread(work: Callable[[], T]) -> Future[T]:
    """Run the client's side in a daemon thread while the test plays the server (a failed test
    must not wait for a client still blocked on the call it never got answered)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def rich_trailers(code: grpc.StatusCode, message: str, *details: Message) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code_pb2.Code.Value(code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return ((DETAILS_TRAILER, status.SerializeToString()),)


def job_events(*sequences: int) -> control_pb2.WatchJobEventsResponse:
    response = control_pb2.WatchJobEventsResponse()
    for sequence in sequences:
        response.events.events.append(
            event_pb2.JobEvent(job_id=JOB_ID, sequence=sequence, type="agent.thinking")
        )
    return response


def test_rich_error_details_are_decoded_from_the_trailer(
    client: SyncClient, channel: RecordingChannel
) -> None:
    pending = in_thread(lambda: client.submit_job(project_id="bad id", goal="", daily_budget_microdollars=-1))
    metadata, request, rpc = channel.channel.take_unary_unary(CONTROL.methods_by_name["SubmitJob"])
    assert request.request_id, "an idempotency key is generated"
    assert ("authorization", "Bearer t0k3n") in metadata
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="project_id", description="bad characters"),
            error_details_pb2.BadRequest.FieldViolation(field="goal", description="is required"),
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="cofounder.dev")
    rpc.terminate(
        None,
        rich_trailers(grpc.StatusCode.INVALID_ARGUMENT, "2 fields", bad_request, info),
        grpc.StatusCode.INVALID_ARGUMENT,
        "project_id: bad characters; goal: is required",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        pending.result(WAIT)
    assert caught.value.field_violations == [("project_id", "bad characters"), ("goal", "is required")]
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.message == "project_id: bad characters; goal: is required"
    assert not caught.value.retryable


def test_retry_info_makes_an_error_retryable_and_a_disagreeing_trailer_is_ignored(
    client: SyncClient, channel: RecordingChannel
) -> None:
    method = CONTROL.methods_by_name["GetJobStatus"]
    first = in_thread(lambda: client.get_job_status(JOB_ID))
    _, _, rpc = channel.channel.take_unary_unary(method)
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    rpc.terminate(
        None,
        rich_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "slow down",
    )
    with pytest.raises(CofounderError) as limited:
        first.result(WAIT)
    assert limited.value.retry_delay == 2.5
    assert limited.value.retryable

    second = in_thread(lambda: client.get_job_status(JOB_ID))
    _, _, rpc = channel.channel.take_unary_unary(method)
    # A proxy rewrote the status: the trailer describes another code and must not be trusted.
    not_found = error_details_pb2.ErrorInfo(reason="JOB_NOT_FOUND", domain="cofounder.dev")
    rpc.terminate(
        None,
        rich_trailers(grpc.StatusCode.NOT_FOUND, "gone", not_found),
        grpc.StatusCode.UNAVAILABLE,
        "upstream reset",
    )
    with pytest.raises(UnavailableError) as unavailable:
        second.result(WAIT)
    assert unavailable.value.reason is None
    assert unavailable.value.message == "upstream reset"


def test_a_follow_that_drops_resumes_after_the_last_sequence_without_duplicates_or_gaps(
    client: SyncClient, channel: RecordingChannel
) -> None:
    seen: list[int] = []
    changed = threading.Condition()

    def follow() -> None:
        for event in client.follow_job_events(JOB_ID, after_sequence=0, initial_backoff=0.001):
            with changed:
                seen.append(event.sequence)
                changed.notify_all()

    def wait_for_seen(count: int) -> None:
        # grpc_testing drops responses the client has not read when the call fails, as a
        # broken connection would: fail the stream only after the client has its events.
        with changed:
            assert changed.wait_for(lambda: len(seen) >= count, WAIT), f"seen only {seen}"

    pending = in_thread(follow)
    method = CONTROL.methods_by_name["WatchJobEvents"]

    _, request, rpc = channel.channel.take_unary_stream(method)
    assert request.job_id == JOB_ID
    assert request.after_sequence == 0
    rpc.send_response(control_pb2.WatchJobEventsResponse(snapshot=job_pb2.JobStatusSnapshot(job_id=JOB_ID)))
    rpc.send_response(job_events(1, 2))
    rpc.send_response(job_events(3))
    wait_for_seen(3)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "server shutting down")

    _, request, rpc = channel.channel.take_unary_stream(method)
    assert request.after_sequence == 3, "the follower resumes after the last event it yielded"
    rpc.send_response(control_pb2.WatchJobEventsResponse(snapshot=job_pb2.JobStatusSnapshot(job_id=JOB_ID)))
    rpc.send_response(job_events(3, 4))  # a replayed event is dropped
    rpc.send_response(job_events(5))
    rpc.terminate((), grpc.StatusCode.OK, "")

    pending.result(WAIT)
    assert seen == [1, 2, 3, 4, 5]


def test_a_follow_raises_errors_that_reconnecting_cannot_fix(
    client: SyncClient, channel: RecordingChannel
) -> None:
    pending = in_thread(lambda: list(client.follow_job_events(JOB_ID, after_sequence=0)))
    _, _, rpc = channel.channel.take_unary_stream(CONTROL.methods_by_name["WatchJobEvents"])
    rpc.terminate(
        rich_trailers(
            grpc.StatusCode.NOT_FOUND,
            "job not found",
            error_details_pb2.ErrorInfo(reason="JOB_NOT_FOUND", domain="cofounder.dev"),
        ),
        grpc.StatusCode.NOT_FOUND,
        "job not found",
    )
    with pytest.raises(NotFoundError) as caught:
        pending.result(WAIT)
    assert caught.value.reason == "JOB_NOT_FOUND"


def test_follow_jobs_resumes_after_a_drop_and_lists_again_when_its_cursor_expired(
    client: SyncClient, channel: RecordingChannel
) -> None:
    updates: list[FleetSnapshot | control_pb2.JobChange] = []
    changed = threading.Condition()

    def follow() -> None:
        with contextlib.closing(client.follow_jobs(project_id="web", initial_backoff=0.001)) as view:
            for update in view:
                with changed:
                    updates.append(update)
                    changed.notify_all()
                if len(updates) == 3:
                    return

    def wait_for_updates(count: int) -> None:
        with changed:
            assert changed.wait_for(lambda: len(updates) >= count, WAIT), f"got only {updates}"

    def status(job_id: str) -> job_pb2.JobStatusSnapshot:
        return job_pb2.JobStatusSnapshot(job_id=job_id)

    pending = in_thread(follow)
    method = CONTROL.methods_by_name["WatchJobs"]

    _, request, rpc = channel.channel.take_unary_stream(method)
    assert request.project_id == "web"
    assert not request.HasField("after_sequence")
    rpc.send_response(
        control_pb2.WatchJobsResponse(snapshot=control_pb2.JobStatusPage(statuses=[status("a")]))
    )
    rpc.send_response(
        control_pb2.WatchJobsResponse(
            snapshot=control_pb2.JobStatusPage(statuses=[status("b")], last=True, latest_sequence=10)
        )
    )
    rpc.send_response(
        control_pb2.WatchJobsResponse(
            changes=control_pb2.JobChangeBatch(
                changes=[control_pb2.JobChange(sequence=11, status=status("a"))]
            )
        )
    )
    wait_for_updates(2)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "server shutting down")

    _, request, rpc = channel.channel.take_unary_stream(method)
    assert request.after_sequence == 11, "the view resumes after the last change it yielded"
    rpc.terminate((), grpc.StatusCode.OUT_OF_RANGE, "cursor expired")

    _, request, rpc = channel.channel.take_unary_stream(method)
    assert not request.HasField("after_sequence"), "an expired cursor lists the fleet again"
    rpc.send_response(
        control_pb2.WatchJobsResponse(
            snapshot=control_pb2.JobStatusPage(statuses=[status("a")], last=True, latest_sequence=20)
        )
    )

    pending.result(WAIT)
    first, change, relisted = updates
    assert isinstance(first, FleetSnapshot)
    assert [s.job_id for s in first.statuses] == ["a", "b"]  # both pages, as one
    assert first.sequence == 10
    assert isinstance(change, control_pb2.JobChange)
    assert change.sequence == 11
    assert isinstance(relisted, FleetSnapshot)
    assert [s.job_id for s in relisted.statuses] == ["a"]
    assert relisted.sequence == 20


def test_deadlines_are_passed_to_each_call(client: SyncClient, channel: RecordingChannel) -> None:
    def calls() -> None:
        client.get_job(JOB_ID)
        client.get_job(JOB_ID, timeout=0.25)
        client.get_job(JOB_ID, timeout=None)
        list(client.watch_job_events(JOB_ID, timeout=30))

    pending = in_thread(calls)
    for _ in range(3):
        _, _, rpc = channel.channel.take_unary_unary(CONTROL.methods_by_name["GetJob"])
        rpc.terminate(control_pb2.GetJobResponse(job=job_pb2.Job(job_id=JOB_ID)), (), grpc.StatusCode.OK, "")
    _, _, stream = channel.channel.take_unary_stream(CONTROL.methods_by_name["WatchJobEvents"])
    stream.terminate((), grpc.StatusCode.OK, "")
    pending.result(WAIT)
    assert channel.timeouts == [
        ("GetJob", 7.5),  # the client's default
        ("GetJob", 0.25),
        ("GetJob", None),
        ("WatchJobEvents", 30),
    ]
