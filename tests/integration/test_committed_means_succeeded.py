"""Committed means succeeded: Redis stops between the SQL commit and the live layer.

The server's own Redis engine is stopped at exactly that moment (the change pipeline's
``before_live`` pause): SubmitJob, CancelJob and WakeAgent still answer OK once, the durable
record is right, and once Redis is back the live keys and GetJobStatus agree with SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.domain.changes import Change
from cofounder_server.domain.model import AgentState
from cofounder_server.live import keys
from cofounder_server.live.engine import EmbeddedRedis
from cofounder_server.live.summary import decode_summary
from cofounder_server.store.database import open_database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.runners import RunnerLeases
from cofounder_server.store.runs import RunRepository
from tests.events.support import watch
from tests.integration.test_jobs import submit_request
from tests.support import RPC_TIMEOUT, eventually


class Outage:
    """Stops the Redis engine after the next commit, before its live keys are written."""

    def __init__(self, engine: EmbeddedRedis) -> None:
        self.engine = engine
        self.armed = False
        self.outages = 0

    async def __call__(self, changes: Sequence[Change]) -> None:
        if self.armed:
            self.armed = False
            self.outages += 1
            await self.engine.stop()


@pytest.fixture
async def server(
    settings_for, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Application, EmbeddedRedis, Outage]]:
    engine = EmbeddedRedis(tmp_path / "redis")
    redis_url = await engine.start()
    app = await Application.start(
        settings_for(database_url=database_url, redis_url=redis_url), clock=ManualClock(datetime.now(UTC))
    )
    outage = Outage(engine)
    app.changes.before_live = outage
    try:
        yield app, engine, outage
    finally:
        await app.stop(grace_seconds=1.0)
        await engine.stop()


async def _live_keys(redis_url: str, job_id: str) -> dict[str, bytes | None]:
    client = Redis.from_url(redis_url)
    try:
        names = {
            "state": keys.state_key(job_id),
            "wake_at": keys.wake_at_key(job_id),
            "summary": keys.summary_key(job_id),
            "last_seq": keys.last_sequence_key(job_id),
        }
        values = await client.mget(list(names.values()))
        return dict(zip(names, values, strict=True))
    finally:
        await client.aclose()


async def _status(stub, job_id: str) -> job_pb2.JobStatusSnapshot:
    return (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=RPC_TIMEOUT)).status


async def _recovered(app: Application, engine: EmbeddedRedis, job_id: str, accept) -> dict[str, bytes | None]:
    """Start Redis again and wait until the repair has rewritten the job's live keys (no
    status call in between: the repair alone must do it)."""
    await engine.start()
    return await eventually(lambda: _live_keys(app.redis_url, job_id), accept, within=20.0)


def _summary_status(values: dict[str, bytes | None]) -> str | None:
    raw = values["summary"]
    summary = decode_summary(raw) if raw is not None else None
    return None if summary is None else summary.status.value


async def test_submit_cancel_and_wake_succeed_once_when_redis_stops_after_the_commit(server) -> None:
    app, engine, outage = server
    project_id = f"outage-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)

        # SubmitJob: committed, then Redis stops. OK, and one job.
        outage.armed = True
        submitted = (await stub.SubmitJob(submit_request(project_id), timeout=RPC_TIMEOUT)).job
        assert outage.outages == 1
        assert submitted.status == job_pb2.JOB_STATUS_QUEUED
        listed = await stub.ListJobs(pb.ListJobsRequest(project_id=project_id), timeout=RPC_TIMEOUT)
        assert [job.job_id for job in listed.jobs] == [submitted.job_id]
        values = await _recovered(
            app, engine, submitted.job_id, lambda v: _summary_status(v) == "queued" and v["last_seq"]
        )
        assert values["last_seq"] == b"1:"
        status = await _status(stub, submitted.job_id)
        assert (status.job_status, status.latest_event_sequence) == (job_pb2.JOB_STATUS_QUEUED, 1)

        # CancelJob: committed, then Redis stops. OK, and the job is cancelled in SQL. A watch
        # open all along gets the cancellation, which was never announced, from SQL.
        stream = watch(stub, submitted.job_id, after=0)
        assert (await stream.snapshot()).latest_event_sequence == 1
        await stream.until(1)
        outage.armed = True
        cancelled = await stub.CancelJob(
            pb.CancelJobRequest(job_id=submitted.job_id, reason="outage"), timeout=RPC_TIMEOUT
        )
        assert outage.outages == 2
        assert cancelled.job.status == job_pb2.JOB_STATUS_CANCELLED
        stored = await stub.GetJob(pb.GetJobRequest(job_id=submitted.job_id), timeout=RPC_TIMEOUT)
        assert stored.job.status == job_pb2.JOB_STATUS_CANCELLED
        await _recovered(app, engine, submitted.job_id, lambda v: _summary_status(v) == "cancelled")
        assert await stream.end(within=20.0) is None
        assert stream.sequences() == [1, 2]
        status = await _status(stub, submitted.job_id)
        assert (status.job_status, status.latest_event_sequence) == (job_pb2.JOB_STATUS_CANCELLED, 2)

        # WakeAgent on a sleeping agent: committed, then Redis stops. OK, the agent is awake.
        sleeper = (await stub.SubmitJob(submit_request(project_id), timeout=RPC_TIMEOUT)).job
        wake_at = app.clock.now() + timedelta(hours=3)
        await _put_to_sleep(app, sleeper.job_id, wake_at)
        values = await _live_keys(app.redis_url, sleeper.job_id)
        assert (values["state"], values["wake_at"]) == (b"sleeping", keys.format_wake_at(wake_at).encode())

        outage.armed = True
        woken = await stub.WakeAgent(
            pb.WakeAgentRequest(job_id=sleeper.job_id, request_id="wake-1", top_up_microdollars=1000),
            timeout=RPC_TIMEOUT,
        )
        assert outage.outages == 3
        assert woken.status.agent_state == job_pb2.AGENT_STATE_WORKING
        assert woken.status.daily_budget_microdollars == 5_000_000 + 1000
        values = await _recovered(app, engine, sleeper.job_id, lambda v: v["state"] == b"working")
        assert values["wake_at"] is None
        assert _summary_status(values) == "running"
        status = await _status(stub, sleeper.job_id)
        assert status.agent_state == job_pb2.AGENT_STATE_WORKING
        assert status.latest_event_sequence == 4  # queued, running, sleeping, waking
        # A retry of the same request changes nothing more.
        again = await stub.WakeAgent(
            pb.WakeAgentRequest(job_id=sleeper.job_id, request_id="wake-1", top_up_microdollars=1000),
            timeout=RPC_TIMEOUT,
        )
        assert again.status.daily_budget_microdollars == 5_000_000 + 1000
        assert (await _status(stub, sleeper.job_id)).latest_event_sequence == 4


async def _put_to_sleep(app: Application, job_id: str, wake_at: datetime) -> None:
    """Claim the job and put its agent to sleep, as an executor does, through the server's
    own change pipeline."""
    from cofounder_server.domain.events import AgentSleeping, SleepReason

    database = await open_database(app.database_url)
    try:
        runs = RunRepository(database, EventLogRepository(database, retention_events=1000))
        now = app.clock.now()
        await RunnerLeases(database).renew("elsewhere", now=now, lease_until=now + timedelta(hours=1))
        claimed = await runs.claim(job_id, "elsewhere", now=now)
        assert claimed is not None
        await app.changes.committed(claimed)
        asleep = await runs.set_agent_state(
            job_id,
            state=AgentState.SLEEPING,
            wake_at=wake_at,
            events=[AgentSleeping(wake_time=wake_at, reason=SleepReason.BUDGET_THRESHOLD)],
            now=now,
        )
        assert asleep is not None
        await app.changes.committed(asleep)
    finally:
        await database.close()


async def test_the_executor_runs_a_job_submitted_while_redis_is_down(
    settings_for, database_url: str, tmp_path: Path
) -> None:
    """The runner is told in process: a job submitted as Redis stops is claimed at once (the
    claim loop alone would wait a minute) and runs to its end; its keys are repaired later."""
    engine = EmbeddedRedis(tmp_path / "redis")
    redis_url = await engine.start()
    settings = settings_for(
        database_url=database_url,
        redis_url=redis_url,
        executor_enabled=True,
        claim_interval_seconds=60.0,
        rate_limit_per_second=0.0,
    )
    app = await Application.start(settings, clock=ManualClock(datetime.now(UTC)))
    outage = Outage(engine)
    app.changes.before_live = outage
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            request = submit_request(f"outage-{uuid.uuid4().hex[:8]}")
            request.agent.config.update({"turns": [{"text": "done"}], "loop": False})
            outage.armed = True
            job = (await stub.SubmitJob(request, timeout=RPC_TIMEOUT)).job
            assert outage.outages == 1

            async def stored() -> job_pb2.Job:
                return (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job

            done = await eventually(stored, lambda j: j.status == job_pb2.JOB_STATUS_READY, within=20.0)
            assert done.outcome == job_pb2.JOB_OUTCOME_COMPLETED
            values = await _recovered(app, engine, job.job_id, lambda v: _summary_status(v) == "ready")
            assert values["state"] == b"completed"
            status = await _status(stub, job.job_id)
            assert status.job_status == job_pb2.JOB_STATUS_READY
            assert status.agent_state == job_pb2.AGENT_STATE_COMPLETED
    finally:
        await app.stop(grace_seconds=1.0)
        await engine.stop()
