"""Streams: cancellation reaches the server, and follow_job_events resumes where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import pytest
from client_fakes import (
    RPC_TIMEOUT,
    Harness,
    WatchPlan,
    drain,
    error_info,
    event,
    new_escalation,
    new_job,
    rich_status,
)

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_service_pb2, event_pb2, job_pb2
from cofounder_client import Client, FleetSnapshot, OutOfRangeError, UnavailableError


async def _server_sees_cancellation(harness: Harness) -> None:
    await asyncio.wait_for(harness.recorder.stream_cancelled.wait(), RPC_TIMEOUT)


async def test_watch_job_events_delivers_snapshot_events_and_heartbeats(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 5)], snapshot_sequence=1
    )
    async with asyncio.timeout(RPC_TIMEOUT):
        messages = [m async for m in client.watch_job_events(job.job_id)]

    assert [m.WhichOneof("kind") for m in messages] == ["snapshot", "events", "heartbeat", "events"]
    assert messages[0].snapshot.latest_event_sequence == 1
    assert [e.sequence for m in messages[1::2] for e in m.events.events] == [2, 3, 4]
    request = harness.recorder.calls_to("WatchJobEvents")[0].request
    assert not request.HasField("after_sequence")


async def test_watch_job_events_sends_the_cursor_including_zero(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[event(job.job_id, 1)], snapshot_sequence=1)
    async with asyncio.timeout(RPC_TIMEOUT):
        messages = [m async for m in client.watch_job_events(job.job_id, after_sequence=0)]
    request = harness.recorder.calls_to("WatchJobEvents")[0].request
    assert request.HasField("after_sequence")
    assert request.after_sequence == 0
    assert [e.sequence for m in messages if m.HasField("events") for e in m.events.events] == [1]


async def test_aclose_cancels_the_rpc_on_the_server(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[], hang=True)
    stream = client.watch_job_events(job.job_id)
    async with asyncio.timeout(RPC_TIMEOUT):
        first = await anext(stream)
    assert first.HasField("snapshot")
    assert not harness.recorder.stream_cancelled.is_set()

    await stream.aclose()

    await _server_sees_cancellation(harness)


async def test_leaving_an_aclosing_block_early_cancels_the_rpc(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[event(job.job_id, 1)], hang=True)
    async with (
        asyncio.timeout(RPC_TIMEOUT),
        contextlib.aclosing(client.follow_job_events(job.job_id, after_sequence=0)) as events,
    ):
        async for received in events:
            assert received.sequence == 1
            break
    await _server_sees_cancellation(harness)


async def test_cancelling_the_iterating_task_cancels_the_rpc(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[], hang=True)
    first_message = asyncio.Event()

    async def consume() -> None:
        async for _ in client.watch_job_events(job.job_id):
            first_message.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_message.wait(), RPC_TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _server_sees_cancellation(harness)


async def test_watch_escalations_is_cancelled_by_aclose(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    pending = harness.escalations.add(new_escalation(job.job_id))
    harness.escalations.hang_watch = True
    stream = client.watch_escalations(job_id=job.job_id, after_sequence=0)
    async with asyncio.timeout(RPC_TIMEOUT):
        snapshot = await anext(stream)
        batch = await anext(stream)
    assert isinstance(snapshot, escalation_service_pb2.WatchEscalationsResponse)
    assert [e.escalation_id for e in snapshot.snapshot.pending] == [pending.escalation_id]
    assert [e.sequence for e in batch.events.events] == [1]
    request = harness.recorder.calls_to("WatchEscalations")[0].request
    assert (request.job_id, request.after_sequence) == (job.job_id, 0)

    await stream.aclose()

    await _server_sees_cancellation(harness)


async def _follow(client: Client, job_id: str, after_sequence: int | None = None) -> list[event_pb2.JobEvent]:
    async with asyncio.timeout(RPC_TIMEOUT):
        return [
            e
            async for e in client.follow_job_events(
                job_id, after_sequence=after_sequence, initial_backoff=0.01, max_backoff=0.05
            )
        ]


async def test_follow_resumes_after_the_last_sequence_when_the_stream_drops(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    # First connection delivers 3 events then fails with UNAVAILABLE; the second, 2 more.
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 9)], drops=[3, 2]
    )

    events = await _follow(client, job.job_id, after_sequence=0)

    assert [e.sequence for e in events] == list(range(1, 9))
    cursors = [c.request.after_sequence for c in harness.recorder.calls_to("WatchJobEvents")]
    assert cursors == [0, 3, 5]


async def test_follow_without_cursor_pins_the_snapshot_sequence(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 7)], snapshot_sequence=4, drops=[0]
    )

    events = await _follow(client, job.job_id)

    assert [e.sequence for e in events] == [5, 6]
    first, second = harness.recorder.calls_to("WatchJobEvents")
    assert not first.request.HasField("after_sequence")
    assert second.request.HasField("after_sequence")
    assert second.request.after_sequence == 4


async def test_follow_raises_other_errors_without_reconnecting(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, 1)],
        end_error=rich_status(grpc.StatusCode.OUT_OF_RANGE, "cursor too old", error_info("CURSOR_EXPIRED")),
    )
    received: list[event_pb2.JobEvent] = []
    with pytest.raises(OutOfRangeError):
        await drain(
            client.follow_job_events(job.job_id, after_sequence=0, initial_backoff=0.01), into=received
        )
    assert [e.sequence for e in received] == [1]
    assert len(harness.recorder.calls_to("WatchJobEvents")) == 1


async def test_follow_gives_up_after_max_reconnects(
    make_client: Callable[..., Client], harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    for _ in range(10):
        harness.recorder.failures["WatchJobEvents"].append(rich_status(grpc.StatusCode.UNAVAILABLE, "down"))
    client = make_client(retries=0)

    with pytest.raises(UnavailableError):
        await drain(
            client.follow_job_events(job.job_id, max_reconnects=3, initial_backoff=0.01, max_backoff=0.02)
        )
    assert len(harness.recorder.calls_to("WatchJobEvents")) == 4


async def test_follow_counts_streams_failing_right_after_the_snapshot(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[event(job.job_id, 1)], drops=[0] * 10)

    with pytest.raises(UnavailableError):
        await drain(
            client.follow_job_events(job.job_id, after_sequence=0, max_reconnects=2, initial_backoff=0.01)
        )
    assert len(harness.recorder.calls_to("WatchJobEvents")) == 3


async def test_follow_jobs_resumes_after_a_drop_and_lists_again_when_its_cursor_expired(
    client: Client, harness: Harness
) -> None:
    jobs = [harness.jobs.add(new_job()) for _ in range(2)]
    updates = []
    async with (
        asyncio.timeout(RPC_TIMEOUT),
        contextlib.aclosing(client.follow_jobs(project_id="web", initial_backoff=0.01)) as view,
    ):
        async for update in view:
            updates.append(update)
            if len(updates) == 3:
                break

    first, change, relisted = updates
    assert isinstance(first, FleetSnapshot)
    assert [s.job_id for s in first.statuses] == [job.job_id for job in jobs]  # both pages, as one
    assert first.sequence == 10
    assert isinstance(change, control_pb2.JobChange)
    assert change.sequence == 11
    assert isinstance(relisted, FleetSnapshot)
    assert relisted.sequence == 20
    requests = [call.request for call in harness.recorder.calls_to("WatchJobs")]
    # Resumed after the change it had, then listed again once that cursor was gone.
    assert [r.after_sequence if r.HasField("after_sequence") else None for r in requests] == [None, 11, None]
    assert {r.project_id for r in requests} == {"web"}


async def test_follow_job_yields_each_connections_snapshot_and_reports_reconnects(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 4)], drops=[1]
    )
    reconnects: list[tuple[str, int, float]] = []

    items: list[job_pb2.JobStatusSnapshot | event_pb2.JobEvent] = []
    await drain(
        client.follow_job(
            job.job_id,
            after_sequence=0,
            initial_backoff=0.01,
            on_reconnect=lambda error, attempt, delay: reconnects.append((error.code.name, attempt, delay)),
        ),
        items,
    )

    kinds = [type(item).__name__ for item in items]
    assert kinds == ["JobStatusSnapshot", "JobEvent", "JobStatusSnapshot", "JobEvent", "JobEvent"]
    assert [item.sequence for item in items if isinstance(item, event_pb2.JobEvent)] == [1, 2, 3]
    ((code, attempt, delay),) = reconnects
    assert (code, attempt) == ("UNAVAILABLE", 1)
    assert 0.005 <= delay <= 0.01  # the first backoff, with jitter
