"""SubmitJob through the group commit: requests that arrive together share a transaction
and a Redis round trip, and each is answered as if it had been alone."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.domain.changes import Spend
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.model import AgentSpec, JobStatus, NewJob
from cofounder_server.live import keys
from cofounder_server.live.summary import JobSummary, summary_version
from cofounder_server.live.versioned import decode
from cofounder_server.services.submissions import SubmissionWriter
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository
from tests.integration.test_jobs import submit, submit_request
from tests.support import RPC_TIMEOUT


async def outcome(stub, request: pb.SubmitJobRequest) -> job_pb2.Job | grpc.StatusCode:
    try:
        return (await stub.SubmitJob(request, timeout=RPC_TIMEOUT)).job
    except grpc.aio.AioRpcError as error:
        return error.code()


async def listed(stub, project_id: str) -> list[job_pb2.Job]:
    response = await stub.ListJobs(
        pb.ListJobsRequest(project_id=project_id, page_size=100), timeout=RPC_TIMEOUT
    )
    return list(response.jobs)


async def test_concurrent_submits_each_get_their_own_outcome(jobs_stub, project_id) -> None:
    fresh = [submit_request(project_id, goal=f"fresh {n}") for n in range(30)]
    retried = [submit_request(project_id, request_id="same-key", goal="first body") for _ in range(10)]
    reused = [submit_request(project_id, request_id="same-key", goal="second body") for _ in range(5)]
    requests = fresh + retried + reused
    random.Random(7).shuffle(requests)
    results = await asyncio.gather(*(outcome(jobs_stub, request) for request in requests))

    by_goal: dict[str, list[job_pb2.Job | grpc.StatusCode]] = {}
    for request, result in zip(requests, results, strict=True):
        by_goal.setdefault(request.goal, []).append(result)
    assert all(isinstance(by_goal[f"fresh {n}"][0], job_pb2.Job) for n in range(30))
    # One body of the shared key won, whichever came first; every request with it got its
    # job, every request with the other body was refused.
    first, second = by_goal["first body"], by_goal["second body"]
    winner, loser = (first, second) if isinstance(first[0], job_pb2.Job) else (second, first)
    assert len({job.job_id for job in winner if isinstance(job, job_pb2.Job)}) == 1
    assert all(isinstance(job, job_pb2.Job) for job in winner)
    assert loser == [grpc.StatusCode.ALREADY_EXISTS] * len(loser)

    jobs = await listed(jobs_stub, project_id)
    assert len(jobs) == 31
    assert {job.status for job in jobs} == {job_pb2.JOB_STATUS_QUEUED}


async def test_a_new_job_has_the_live_keys_and_first_event_a_lone_submit_had(
    app: Application, jobs_stub, redis: Redis, project_id
) -> None:
    submitted = await submit(jobs_stub, project_id)
    job = await JobRepository(app.database, app.event_log).get(submitted.job_id, owner_scope=None)
    assert job is not None

    summary = JobSummary.of(job, Spend(0, job.daily_budget_microdollars))
    stored = await redis.mget(
        [
            keys.summary_key(job.job_id),
            keys.last_sequence_key(job.job_id),
            keys.state_key(job.job_id),
            keys.wake_at_key(job.job_id),
            keys.budget_pct_key(job.job_id),
        ]
    )
    assert stored[0] == f"{summary_version(job, 0)}:{summary.encode()}".encode()
    assert decode(stored[1]) == (1, "")
    assert stored[2:] == [None, None, None]

    watch = jobs_stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job.job_id, after_sequence=0))
    try:
        async for message in watch:
            if message.HasField("events"):
                [event] = message.events.events
                break
    finally:
        watch.cancel()
    assert (event.sequence, event.type) == (1, "job.status_changed")
    assert event.job_status_changed.status == job_pb2.JOB_STATUS_QUEUED


async def test_one_request_the_database_refuses_fails_alone(
    app: Application, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    writer = SubmissionWriter(JobRepository(app.database, app.event_log), app.changes, clock)
    writer.start()
    try:
        good = [
            NewJob(
                owner_id="alice",
                project_id="p",
                goal=f"good {n}",
                daily_budget_microdollars=1,
                agent=AgentSpec("b"),
            )
            for n in range(4)
        ]
        # Nothing the API lets through can be refused; a config JSON cannot encode can.
        bad = NewJob(
            owner_id="alice",
            project_id="p",
            goal="bad",
            daily_budget_microdollars=1,
            agent=AgentSpec("b", config={"x": object()}),
        )
        results = await asyncio.gather(
            *(writer.submit(JobCreation(new, None, new.goal)) for new in [*good[:2], bad, *good[2:]]),
            return_exceptions=True,
        )
    finally:
        await writer.stop()

    refused = results.pop(2)
    assert isinstance(refused, Exception), refused
    assert not isinstance(refused, Unavailable)
    assert "a batch of 5 new jobs failed" in caplog.text  # they were one batch
    assert [job.goal for job in results] == [new.goal for new in good]
    for job in results:
        assert job.status is JobStatus.QUEUED
        assert await JobRepository(app.database, app.event_log).get(job.job_id, owner_scope=None) == job


async def test_every_submitter_is_answered_while_batches_commit_and_announce_at_once(
    app: Application, clock: ManualClock
) -> None:
    """Submitters that send again as soon as they are answered keep the writer committing
    while earlier batches are being announced: each request is answered exactly once."""
    # Small batches: the writer commits the next ones while the first is being announced.
    writer = SubmissionWriter(JobRepository(app.database, app.event_log), app.changes, clock, max_batch=4)
    writer.start()

    async def submitter(n: int) -> list[str]:
        made = []
        for k in range(15):
            new = NewJob(
                owner_id="alice",
                project_id="p",
                goal=f"{n}/{k}",
                daily_budget_microdollars=1,
                agent=AgentSpec("b"),
            )
            made.append((await writer.submit(JobCreation(new, None, new.goal))).goal)
        return made

    try:
        results = await asyncio.wait_for(asyncio.gather(*(submitter(n) for n in range(20))), 30)
    finally:
        await writer.stop()
    assert results == [[f"{n}/{k}" for k in range(15)] for n in range(20)]


async def test_stopping_answers_what_was_submitted(app: Application, clock: ManualClock) -> None:
    writer = SubmissionWriter(JobRepository(app.database, app.event_log), app.changes, clock)
    writer.start()
    new = NewJob(
        owner_id="alice", project_id="p", goal="last one", daily_budget_microdollars=1, agent=AgentSpec("b")
    )
    pending = asyncio.create_task(writer.submit(JobCreation(new, None, "fp")))
    await asyncio.sleep(0)
    await writer.stop()
    assert (await pending).goal == "last one"
    with pytest.raises(RuntimeError, match="not running"):
        await writer.submit(JobCreation(new, None, "fp"))


async def test_a_missing_database_is_unavailable_and_nothing_else(settings_for, database_url) -> None:
    if database_url:
        pytest.skip("takes the SQLite file away")
    app = await Application.start(settings_for())
    path = Path(app.database.engine.url.database or "")
    aside = path.with_name("aside")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            assert isinstance(await outcome(stub, submit_request("missing")), job_pb2.Job)
            await app.database.close()
            aside.mkdir()
            for file in path.parent.glob(path.name + "*"):
                shutil.move(file, aside / file.name)
            # SQLite opens a new, empty file in its place: no tables.
            assert await outcome(stub, submit_request("missing")) == grpc.StatusCode.UNAVAILABLE

            await app.database.close()
            for file in path.parent.glob(path.name + "*"):
                os.remove(file)
            for file in aside.iterdir():
                shutil.move(file, path.parent / file.name)
            assert isinstance(await outcome(stub, submit_request("missing")), job_pb2.Job)
            assert len(await listed(stub, "missing")) == 2
    finally:
        await app.stop(grace_seconds=0)
