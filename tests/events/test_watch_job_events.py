"""WatchJobEvents against real servers: snapshot, replay, live tail, resume, heartbeats, ends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from cofounder_server.domain.changes import Change
from cofounder_server.domain.events import JobStatusChanged
from cofounder_server.domain.model import JobStatus
from cofounder_server.events.hub import pack
from cofounder_server.events.job_events import wire_event
from cofounder_server.store.events import EventLogRepository
from tests.events.conftest import REPLICA_BUFFER_EVENTS, start_replica
from tests.events.support import error_info, publish, publish_many, thinking, watch
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT, eventually


async def test_snapshot_then_live_events_then_terminal_end(app, jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch(jobs_stub, job.job_id)

    snapshot = await stream.snapshot()
    assert snapshot.job_id == job.job_id
    assert snapshot.job_status == job_pb2.JOB_STATUS_QUEUED
    assert snapshot.latest_event_sequence == 1  # the QUEUED status change

    assert await publish(app, job.job_id, thinking(1, "planning")) == 2
    events = await stream.until(2)
    assert [(e.sequence, e.type, e.agent_thinking.text) for e in events] == [
        (2, "agent.thinking", "planning")
    ]
    assert events[0].job_id == job.job_id

    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id, reason="enough"), timeout=RPC_TIMEOUT)
    assert await stream.end() is None  # OK, right after the terminal event
    last = stream.events[-1]
    assert (last.sequence, last.type) == (3, "job.status_changed")
    changed = last.job_status_changed
    assert changed.previous_status == job_pb2.JOB_STATUS_QUEUED
    assert changed.status == job_pb2.JOB_STATUS_CANCELLED
    assert changed.outcome == job_pb2.JOB_OUTCOME_CANCELLED
    assert changed.detail == "enough"


async def test_whole_history_of_a_finished_job_then_ok(app, jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await publish_many(app, job.job_id, [thinking(i) for i in range(1, 4)])
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)

    from_start = watch(jobs_stub, job.job_id, after=0)
    assert (await from_start.snapshot()).job_status == job_pb2.JOB_STATUS_CANCELLED
    assert await from_start.end() is None
    assert from_start.sequences() == [1, 2, 3, 4, 5]
    assert from_start.events[0].job_status_changed.status == job_pb2.JOB_STATUS_QUEUED

    live_only = watch(jobs_stub, job.job_id)
    assert (await live_only.snapshot()).latest_event_sequence == 5
    assert await live_only.end() is None  # nothing can follow the terminal event
    assert live_only.events == []


async def test_events_published_during_the_replay_arrive_once_in_order(
    app, jobs_stub, project_id, monkeypatch
) -> None:
    job = await submit(jobs_stub, project_id)
    await publish_many(app, job.job_id, [thinking(i) for i in range(2, 1001)])  # 2..1000
    original = EventLogRepository.read_job_events
    calls = 0

    async def read_then_publish(self, job_id, *, after, limit):
        # The watcher's replay reads a page, and before it goes on more events commit and
        # are published: the next read and the live tail must carry them, once each.
        nonlocal calls
        page = await original(self, job_id, after=after, limit=limit)
        if job_id == job.job_id:
            calls += 1
            if calls <= 3:
                await publish_many(app, job_id, [thinking(0, f"during {calls}.{i}") for i in range(5)])
        return page

    monkeypatch.setattr(EventLogRepository, "read_job_events", read_then_publish)
    stream = watch(jobs_stub, job.job_id, after=0)
    await stream.snapshot()
    async with asyncio.TaskGroup() as group:
        group.create_task(stream.until(1015))
        for i in range(20):  # and more, live, while it catches up
            group.create_task(publish(app, job.job_id, thinking(i, f"live {i}")))
    await stream.until(1035)

    assert calls >= 2, "the replay must have read SQL more than once"
    assert stream.sequences() == list(range(1, 1036))
    texts = [e.agent_thinking.text for e in stream.events]
    assert sum(text.startswith("during") for text in texts) == 15
    stream.cancel()


async def test_reconnecting_in_a_burst_loses_and_duplicates_nothing(app, jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    total = 600

    async def burst() -> None:
        for i in range(total):
            await publish(app, job.job_id, thinking(i))

    seen: list[int] = []
    publisher = asyncio.create_task(burst())
    cursor = 1
    for _ in range(5):  # drop the stream after a few events, five times, mid-burst
        stream = watch(jobs_stub, job.job_id, after=cursor)
        await stream.snapshot()
        await stream.until(cursor + 30)
        stream.cancel()
        seen.extend(stream.sequences())
        cursor = seen[-1]
    stream = watch(jobs_stub, job.job_id, after=cursor)
    await stream.snapshot()
    await stream.until(total + 1, within=30)
    seen.extend(stream.sequences())
    stream.cancel()
    await publisher

    assert seen == list(range(2, total + 2))


async def test_two_servers_deliver_the_same_ordered_sequence(
    app, replica, jobs_stub, replica_stub, project_id
) -> None:
    job = await submit(jobs_stub, project_id)
    here = watch(jobs_stub, job.job_id)
    there = watch(replica_stub, job.job_id)
    assert (await here.snapshot()).latest_event_sequence == 1
    assert (await there.snapshot()).latest_event_sequence == 1

    # Both replicas publish, interleaved and concurrently: one log, one order.
    async with asyncio.TaskGroup() as group:
        for i in range(40):
            publisher = app if i % 2 else replica
            group.create_task(publish(publisher, job.job_id, thinking(i, f"from {i % 2}")))
    await asyncio.gather(here.until(41), there.until(41))

    assert here.sequences() == there.sequences() == list(range(2, 42))
    assert [e.SerializeToString() for e in here.events] == [e.SerializeToString() for e in there.events]
    here.cancel()
    there.cancel()


async def test_a_server_restart_mid_stream_resumes_exactly(
    app, jobs_stub, project_id, settings_for, clock
) -> None:
    job = await submit(jobs_stub, project_id)
    doomed = await start_replica(app, settings_for, clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{doomed.port}") as channel:
            from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc

            stream = watch(pb_grpc.AgentControlServiceStub(channel), job.job_id, after=0)
            await stream.snapshot()
            await publish_many(app, job.job_id, [thinking(i) for i in range(10)])
            await stream.until(11)
            await doomed.stop(grace_seconds=5.0)
            error = await stream.end()
    finally:
        await doomed.stop()

    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "SERVER_SHUTTING_DOWN"
    resume_after = int(info.metadata["last_sequence"])
    assert resume_after == stream.sequences()[-1] == 11

    # Published while no server watched; then a new server process takes over.
    await publish_many(app, job.job_id, [thinking(i) for i in range(10)])
    restarted = await start_replica(app, settings_for, clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc

            resumed = watch(pb_grpc.AgentControlServiceStub(channel), job.job_id, after=resume_after)
            await resumed.snapshot()
            await publish(restarted, job.job_id, JobStatusChanged(JobStatus.FAILED))
            assert await resumed.end() is None
    finally:
        await restarted.stop()
    assert stream.sequences() + resumed.sequences() == list(range(1, 23))


async def test_an_expired_cursor_is_out_of_range_naming_the_oldest(
    app, jobs_stub, project_id, database
) -> None:
    job = await submit(jobs_stub, project_id)
    short = EventLogRepository(database, retention_events=10)
    for i in range(30):  # another replica, configured to keep only 10 events per job
        await short.append_job_events(job.job_id, [thinking(i)], now=app.clock.now())
    bounds = await short.job_bounds(job.job_id)
    assert bounds.last_sequence == 31
    assert bounds.pruned_through >= 20

    error = await watch(jobs_stub, job.job_id, after=bounds.pruned_through - 1).end()
    assert error is not None
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    info = error_info(error)
    assert info.reason == "CURSOR_EXPIRED"
    assert info.metadata["oldest_sequence"] == str(bounds.pruned_through + 1)

    whole = watch(jobs_stub, job.job_id, after=0)  # 0: whatever is retained
    await whole.snapshot()
    await whole.until(31)
    assert whole.sequences() == list(range(bounds.pruned_through + 1, 32))
    whole.cancel()

    oldest = watch(jobs_stub, job.job_id, after=bounds.pruned_through)
    await oldest.snapshot()
    assert (await oldest.until(31))[0].sequence == bounds.pruned_through + 1
    oldest.cancel()


async def test_heartbeats_follow_the_injected_clock(app, jobs_stub, clock, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch(jobs_stub, job.job_id)
    await stream.snapshot()

    await clock.advance(timedelta(seconds=14))
    await publish(app, job.job_id, thinking(1))
    message = await stream.next()
    assert message.WhichOneof("kind") == "events", "no heartbeat before 15 s of silence"

    await clock.advance(timedelta(seconds=15))
    message = await stream.next()
    assert message.WhichOneof("kind") == "heartbeat"
    assert message.heartbeat.latest_sequence == 2
    assert message.heartbeat.time.ToDatetime().timestamp() == pytest.approx(clock.now().timestamp(), abs=1)

    await clock.advance(timedelta(seconds=15))
    assert (await stream.next()).heartbeat.latest_sequence == 2
    stream.cancel()


async def test_an_event_whose_publish_was_lost_arrives_by_the_next_heartbeat(
    app, jobs_stub, clock, project_id, event_log
) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch(jobs_stub, job.job_id)
    await stream.snapshot()
    # Committed, but the publisher died before PUBLISH: nothing arrives through Redis.
    await event_log.append_job_events(job.job_id, [thinking(1, "silent")], now=clock.now())
    with pytest.raises(TimeoutError):
        await stream.next(within=0.3)

    await clock.advance(timedelta(seconds=15))
    events = await stream.until(2)
    assert [e.agent_thinking.text for e in events] == ["silent"]
    await clock.advance(timedelta(seconds=15))
    message = await stream.next()
    assert message.heartbeat.latest_sequence == 2
    stream.cancel()


async def test_a_gap_in_pub_sub_is_filled_from_sql(jobs_stub, redis, clock, project_id, event_log) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch(jobs_stub, job.job_id)
    await stream.snapshot()
    stored = await event_log.append_job_events(job.job_id, [thinking(i) for i in range(3)], now=clock.now())
    # Only the last of the three reaches Redis (the other publishes were lost or are late).
    from cofounder_server.api.convert import encode_job_event
    from cofounder_server.live.keys import job_events_channel

    await redis.publish(job_events_channel(job.job_id), pack([wire_event(stored[-1], encode_job_event)]))

    assert stream.sequences() == []
    assert await stream.until(4)
    assert stream.sequences() == [2, 3, 4]
    stream.cancel()


async def test_cancelling_a_watch_frees_its_subscription(app, jobs_stub, redis, project_id) -> None:
    from cofounder_server.live.keys import job_events_channel

    job = await submit(jobs_stub, project_id)
    channel = job_events_channel(job.job_id)
    before = app.event_hub.stats
    streams = [watch(jobs_stub, job.job_id) for _ in range(3)]
    for stream in streams:
        await stream.snapshot()

    assert app.event_hub.stats.watchers == before.watchers + 3
    assert app.event_hub.stats.topics == before.topics + 1
    # Three watchers, one subscription for the process.
    assert dict(await redis.pubsub_numsub(channel)) == {channel.encode(): 1}

    for stream in streams:
        stream.cancel()
    await eventually(lambda: _stats(app), lambda s: s == (before.watchers, before.topics))
    await eventually(lambda: redis.pubsub_numsub(channel), lambda n: dict(n) == {channel.encode(): 0})


async def _stats(app):
    return app.event_hub.stats.watchers, app.event_hub.stats.topics


async def test_a_watcher_that_stops_reading_is_ended_and_others_are_not_delayed(
    app, replica, replica_stub, jobs_stub, project_id
) -> None:
    from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc

    job = await submit(jobs_stub, project_id)
    fast = watch(replica_stub, job.job_id)
    await fast.snapshot()
    # A client with a small, fixed receive window that does not read: the server's sends
    # to it block once the window is full.
    options = [("grpc.http2.lookahead_bytes", 65_536), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}", options=options) as channel:
        slow = watch(pb_grpc.AgentControlServiceStub(channel), job.job_id, reading=False)
        assert (await asyncio.wait_for(slow.call.read(), RPC_TIMEOUT)).HasField("snapshot")
        count = REPLICA_BUFFER_EVENTS * 4
        big = "x" * 60_000
        for i in range(count):
            await publish(app, job.job_id, thinking(i, big))
            # The watcher that reads is never held up by the one that does not.
            await fast.until(i + 2, within=5)

        slow.start_reading()
        error = await slow.end()
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "WATCHER_TOO_SLOW"
    delivered = slow.sequences()
    assert delivered == list(range(2, 2 + len(delivered)))  # in order, no holes, until it ended
    assert int(info.metadata["last_sequence"]) == delivered[-1] < count + 1
    fast.cancel()


async def test_status_is_never_older_than_what_a_watch_delivered(app, jobs_stub, project_id) -> None:
    """The window: a change is committed, its fan-out has not run yet, and a new watch reads
    the change's events (the terminal one included) from SQL. A status read after the stream
    ended must not be older than what it delivered."""
    job = await submit(jobs_stub, project_id)
    await publish_many(app, job.job_id, [thinking(i) for i in range(1, 4)])  # 2..4
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_fan_out(changes: Sequence[Change]) -> None:
        if any(change.job_id == job.job_id for change in changes):
            held.set()
            await release.wait()

    app.changes.before_live = hold_fan_out
    try:
        cancel = asyncio.ensure_future(
            jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
        )
        await asyncio.wait_for(held.wait(), RPC_TIMEOUT)  # committed in SQL; not fanned out

        stream = watch(jobs_stub, job.job_id, after=0)
        await stream.snapshot()
        assert await stream.end() is None
        assert stream.sequences() == [1, 2, 3, 4, 5]
        assert stream.events[-1].job_status_changed.status == job_pb2.JOB_STATUS_CANCELLED

        status = (
            await jobs_stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
        ).status
        assert status.latest_event_sequence >= 5
        assert status.job_status == job_pb2.JOB_STATUS_CANCELLED
    finally:
        release.set()
        app.changes.before_live = None
    assert (await cancel).job.status == job_pb2.JOB_STATUS_CANCELLED


async def test_a_change_is_announced_once_after_its_keys_are_written(
    app, jobs_stub, redis, project_id
) -> None:
    """One pub/sub message per job per change, carrying all its events; a replica that sees
    it and reads the job's keys finds them as new as the change."""
    from cofounder_server.events.hub import unpack
    from cofounder_server.live.keys import job_events_channel, last_sequence_key, summary_key
    from cofounder_server.live.summary import decode_summary

    job = await submit(jobs_stub, project_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(job_events_channel(job.job_id))
    try:
        await pubsub.get_message(timeout=RPC_TIMEOUT)  # the subscription's confirmation
        await publish_many(app, job.job_id, [thinking(i) for i in range(1, 4)])
        message = await pubsub.get_message(timeout=RPC_TIMEOUT)
        assert message is not None
        assert [event.sequence for event in unpack(message["data"])] == [2, 3, 4]
        assert await redis.get(last_sequence_key(job.job_id)) == b"4:"

        await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
        message = await pubsub.get_message(timeout=RPC_TIMEOUT)
        assert message is not None
        assert [event.sequence for event in unpack(message["data"])] == [5]  # the change before: one
        summary_raw, sequence_raw = await redis.mget([summary_key(job.job_id), last_sequence_key(job.job_id)])
        summary = decode_summary(summary_raw)
        assert summary is not None
        assert summary.status is JobStatus.CANCELLED
        assert sequence_raw == b"5:"
    finally:
        await pubsub.aclose()


async def test_a_watch_reads_the_job_status_once(app, jobs_stub, project_id, monkeypatch) -> None:
    from cofounder_server.services.status import LiveStatus

    job = await submit(jobs_stub, project_id)
    original = LiveStatus.snapshot
    reads = 0

    async def counted(self, principal, job_id):
        nonlocal reads
        reads += job_id == job.job_id
        return await original(self, principal, job_id)

    monkeypatch.setattr(LiveStatus, "snapshot", counted)
    stream = watch(jobs_stub, job.job_id)
    assert (await stream.snapshot()).latest_event_sequence == 1
    await publish(app, job.job_id, thinking(2))
    assert [e.sequence for e in await stream.until(2)] == [2]
    assert reads == 1
    stream.cancel()


async def test_a_watch_of_an_ended_job_ends_even_when_the_ending_was_not_announced(
    app, jobs_stub, project_id, monkeypatch
) -> None:
    from cofounder_server.events.hub import Topic
    from cofounder_server.live.keys import job_events_channel

    job = await submit(jobs_stub, project_id)
    first = watch(jobs_stub, job.job_id)  # this process now follows the job's channel
    await first.snapshot()
    channel = job_events_channel(job.job_id)
    offer = Topic.offer

    def lose_this_jobs_messages(topic: Topic, event) -> None:
        if topic.channel != channel:
            offer(topic, event)

    # Pub/sub loses the ending (a reconnect at that moment): the live keys have it, the
    # process's topic has not heard of it.
    monkeypatch.setattr(Topic, "offer", lose_this_jobs_messages)
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)

    late = watch(jobs_stub, job.job_id)
    snapshot = await late.snapshot()
    assert (snapshot.job_status, snapshot.latest_event_sequence) == (job_pb2.JOB_STATUS_CANCELLED, 2)
    assert await late.end() is None
    assert late.events == []
    first.cancel()
