"""WatchJobs: a fleet's statuses in one stream, snapshot first, then every change, resumable."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.domain.model import AgentSpec, NewJob
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository
from tests.events.conftest import start_replica
from tests.events.support import STREAM_TIMEOUT, Stream, error_info
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT

QUEUED = job_pb2.JOB_STATUS_QUEUED
CANCELLED = job_pb2.JOB_STATUS_CANCELLED
ENTERED = pb.JOB_CHANGE_KIND_ENTERED
UPDATED = pb.JOB_CHANGE_KIND_UPDATED
LEFT = pb.JOB_CHANGE_KIND_LEFT


def watch_jobs(
    stub: Any, project_id: str = "", statuses: tuple[int, ...] = (), after: int | None = None
) -> FleetStream:
    request = pb.WatchJobsRequest(project_id=project_id, statuses=statuses)
    if after is not None:
        request.after_sequence = after
    return FleetStream(stub.WatchJobs(request, timeout=STREAM_TIMEOUT))


class FleetStream(Stream):
    """A WatchJobs call read in the background, with the changes it delivered."""

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self.changes: list[pb.JobChange] = []

    async def snapshot_pages(self) -> list[pb.JobStatusPage]:
        pages: list[pb.JobStatusPage] = []
        while not pages or not pages[-1].last:
            message = await self.next()
            assert message.WhichOneof("kind") == "snapshot", message
            pages.append(message.snapshot)
        return pages

    def take(self, message: Any) -> None:
        kind = message.WhichOneof("kind")
        if kind == "changes":
            assert len(message.changes.changes) >= 1
            self.changes.extend(message.changes.changes)
        elif kind == "heartbeat":
            self.heartbeats.append(message.heartbeat)
        else:
            raise AssertionError(f"unexpected {kind} message mid-stream")

    async def changes_until(self, count: int, within: float = RPC_TIMEOUT) -> list[pb.JobChange]:
        """Read until ``count`` changes arrived in all."""
        async with asyncio.timeout(within):
            while len(self.changes) < count:
                message = await self.next(within)
                assert message is not grpc.aio.EOF, "the stream ended"
                self.take(message)
        return self.changes

    async def heartbeat(self, within: float = RPC_TIMEOUT) -> Any:
        """Read until the next heartbeat."""
        seen = len(self.heartbeats)
        async with asyncio.timeout(within):
            while len(self.heartbeats) == seen:
                self.take(await self.next(within))
        return self.heartbeats[-1]


def summary(changes: list[pb.JobChange]) -> list[tuple[str, int, int]]:
    return [(change.status.job_id, change.kind, change.status.job_status) for change in changes]


async def cancel(stub: Any, job_id: str) -> None:
    await stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="done"), timeout=RPC_TIMEOUT)


async def test_a_watch_sends_the_fleet_snapshot_then_each_change_in_order(jobs_stub, project_id) -> None:
    first = await submit(jobs_stub, project_id)
    second = await submit(jobs_stub, project_id)
    await submit(jobs_stub, f"{project_id}-other")

    stream = watch_jobs(jobs_stub, project_id)
    (page,) = await stream.snapshot_pages()
    assert sorted(status.job_id for status in page.statuses) == sorted([first.job_id, second.job_id])
    assert all(status.job_status == QUEUED for status in page.statuses)
    # The same fields as GetJobStatus.
    by_id = {status.job_id: status for status in page.statuses}
    status = (await jobs_stub.GetJobStatus(pb.GetJobStatusRequest(job_id=first.job_id))).status
    assert by_id[first.job_id] == status

    third = await submit(jobs_stub, project_id)
    await cancel(jobs_stub, first.job_id)
    changes = await stream.changes_until(2)
    assert summary(changes) == [(third.job_id, ENTERED, QUEUED), (first.job_id, UPDATED, CANCELLED)]
    assert page.latest_sequence < changes[0].sequence < changes[1].sequence
    assert changes[1].status.latest_event_sequence == 2
    assert changes[1].status.outcome == job_pb2.JOB_OUTCOME_CANCELLED
    stream.cancel()


async def test_the_snapshot_comes_in_bounded_pages(app: Application, jobs_stub, project_id) -> None:
    repository = JobRepository(app.database, app.event_log)
    new = NewJob("local", project_id, "a fleet", 1_000_000, AgentSpec(brain="scripted"))
    created = await repository.create_many([JobCreation(new, None, "")] * 501, now=app.clock.now())

    stream = watch_jobs(jobs_stub, project_id)
    pages = await stream.snapshot_pages()

    assert [len(page.statuses) for page in pages] == [500, 1]
    assert [page.last for page in pages] == [False, True]
    ids = [status.job_id for page in pages for status in page.statuses]
    assert ids == sorted(ids)
    assert set(ids) == {outcome[0].job_id for outcome in created if not isinstance(outcome, Exception)}
    stream.cancel()


async def test_a_resumed_watch_gets_every_change_after_its_cursor_once(jobs_stub, clock, project_id) -> None:
    kept = await submit(jobs_stub, project_id)
    stream = watch_jobs(jobs_stub, project_id)
    (page,) = await stream.snapshot_pages()
    changed = await submit(jobs_stub, project_id)
    (entered,) = await stream.changes_until(1)
    stream.cancel()

    # While nobody watches: one job changes twice, a new one arrives.
    await cancel(jobs_stub, changed.job_id)
    late = await submit(jobs_stub, project_id)
    await cancel(jobs_stub, late.job_id)

    resumed = watch_jobs(jobs_stub, project_id, after=entered.sequence)
    changes = await resumed.changes_until(2)
    # Coalesced: each changed job once, as it stands, in the order of its newest change.
    assert summary(changes) == [(changed.job_id, ENTERED, CANCELLED), (late.job_id, ENTERED, CANCELLED)]
    assert entered.sequence < changes[0].sequence < changes[1].sequence
    heartbeat = await heartbeat_after_moving_time(clock, resumed)
    assert len(resumed.changes) == 2
    assert heartbeat.latest_sequence >= changes[1].sequence
    assert kept.job_id not in {change.status.job_id for change in resumed.changes}

    # From the snapshot's cursor: every job changed since. The snapshot may show a job newer
    # than its cursor (one submitted just before the watch): that one comes again, as it is.
    again = watch_jobs(jobs_stub, project_id, after=page.latest_sequence)
    await again.changes_until(2)
    await heartbeat_after_moving_time(clock, again)
    ids = [change.status.job_id for change in again.changes]
    assert ids in ([changed.job_id, late.job_id], [kept.job_id, changed.job_id, late.job_id])
    resumed.cancel()
    again.cancel()


async def heartbeat_after_moving_time(clock, stream: FleetStream) -> Any:
    """Move the session clock past the heartbeat interval (15 s) until the stream says it is current."""

    async def tick() -> None:
        while True:
            await clock.advance(timedelta(seconds=16))
            await asyncio.sleep(0.05)

    ticker = asyncio.create_task(tick())
    try:
        return await stream.heartbeat()
    finally:
        ticker.cancel()


async def test_a_status_filter_announces_jobs_entering_and_leaving(jobs_stub, project_id) -> None:
    queued = await submit(jobs_stub, project_id)
    await cancel(jobs_stub, (await submit(jobs_stub, project_id)).job_id)

    stream = watch_jobs(jobs_stub, project_id, statuses=(QUEUED,))
    (page,) = await stream.snapshot_pages()
    assert [status.job_id for status in page.statuses] == [queued.job_id]

    arrived = await submit(jobs_stub, project_id)
    await cancel(jobs_stub, queued.job_id)
    changes = await stream.changes_until(2)
    assert summary(changes) == [(arrived.job_id, ENTERED, QUEUED), (queued.job_id, LEFT, CANCELLED)]

    # A job that was never in the view changes outside it: nothing to say.
    await cancel(jobs_stub, arrived.job_id)
    (*_, last) = await stream.changes_until(3)
    assert (last.status.job_id, last.kind) == (arrived.job_id, LEFT)
    stream.cancel()


async def test_a_raw_stub_resumes_on_another_replica_after_the_first_one_is_killed(
    app: Application, jobs_stub, settings_for, clock, project_id
) -> None:
    replica = await start_replica(app, settings_for, clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            replica_stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            first = await submit(jobs_stub, project_id)
            stream = watch_jobs(replica_stub, project_id)
            await stream.snapshot_pages()
            second = await submit(jobs_stub, project_id)  # committed through the other replica
            (entered,) = await stream.changes_until(1)
            assert entered.status.job_id == second.job_id

            stopping = asyncio.create_task(replica.stop(grace_seconds=2.0))
            ended = await stream.end()
            await stopping
    finally:
        await replica.stop(grace_seconds=1.0)

    assert ended is not None
    assert ended.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(ended)
    assert info.reason == "SERVER_SHUTTING_DOWN"
    cursor = int(info.metadata["last_sequence"])
    assert cursor >= entered.sequence

    await cancel(jobs_stub, first.job_id)
    resumed = watch_jobs(jobs_stub, project_id, after=cursor)
    (change,) = await resumed.changes_until(1)
    assert (change.status.job_id, change.status.job_status) == (first.job_id, CANCELLED)
    resumed.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"statuses": [99]}, "statuses[0]"),
        ({"statuses": [0]}, "statuses[0]"),
        ({"project_id": "no spaces"}, "project_id"),
        ({"after_sequence": -1}, "after_sequence"),
        ({"after_sequence": 10**15}, "after_sequence"),
    ],
)
async def test_invalid_watches_are_refused_with_the_field(jobs_stub, request_fields, field) -> None:
    call = jobs_stub.WatchJobs(pb.WatchJobsRequest(**request_fields), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_a_change_whose_publish_was_lost_still_reaches_the_watcher(
    app: Application, jobs_stub, clock, project_id
) -> None:
    job = await submit(jobs_stub, project_id)
    stream = watch_jobs(jobs_stub, project_id)
    await stream.snapshot_pages()

    # Committed by a replica that died before its change pipeline ran: SQL has it, pub/sub not.
    repository = JobRepository(app.database, app.event_log)
    await repository.cancel(job.job_id, owner_scope=None, reason="lost publish", now=clock.now())

    async def tick() -> None:
        while True:
            await clock.advance(timedelta(seconds=16))
            await asyncio.sleep(0.05)

    ticker = asyncio.create_task(tick())
    try:
        (change,) = await stream.changes_until(1)
    finally:
        ticker.cancel()
    assert (change.status.job_id, change.kind, change.status.job_status) == (job.job_id, UPDATED, CANCELLED)
    stream.cancel()
