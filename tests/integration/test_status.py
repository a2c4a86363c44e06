"""GetJobStatus: the agent's Redis keys, read through the tracked cache, with SQL as the fallback.

The keys are written here by a separate Redis client under their contract names, the way
another replica's executor (or an existing dashboard's writer) would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT, eventually


async def status_of(stub, job_id: str) -> job_pb2.JobStatusSnapshot:
    return (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=RPC_TIMEOUT)).status


async def test_new_job_status_comes_from_sql(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)

    status = await status_of(jobs_stub, job.job_id)

    assert status.job_id == job.job_id
    assert status.job_status == job_pb2.JOB_STATUS_QUEUED
    assert status.agent_state == job_pb2.AGENT_STATE_UNSPECIFIED
    assert not status.HasField("wake_time")
    assert not status.HasField("budget_percent")
    assert status.daily_budget_microdollars == 5_000_000
    assert status.spent_today_microdollars == 0
    assert list(status.pending_escalation_ids) == []
    assert status.latest_event_sequence == 1  # the job.status_changed event of its submission


async def test_live_keys_written_elsewhere_show_up(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await status_of(jobs_stub, job.job_id)  # warm the cache with "no live keys"

    await redis.set(f"cofounder:agent:{job.job_id}:state", "working", ex=90_000)
    await redis.set(f"cofounder:agent:{job.job_id}:budget_pct", "42", ex=90)

    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id),
        lambda s: s.agent_state == job_pb2.AGENT_STATE_WORKING and s.budget_percent == 42,
    )
    assert not status.HasField("wake_time")

    await redis.set(f"cofounder:agent:{job.job_id}:budget_pct", "77", ex=90)
    await eventually(lambda: status_of(jobs_stub, job.job_id), lambda s: s.budget_percent == 77)


async def test_sleeping_agent_reports_its_wake_time(jobs_stub, redis, clock, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    wake_at = (clock.now() + timedelta(hours=3)).replace(microsecond=0)

    await redis.set(f"cofounder:agent:{job.job_id}:state", "sleeping", ex=90_000)
    await redis.set(f"cofounder:agent:{job.job_id}:wake_at", wake_at.isoformat(), ex=3 * 3600)

    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id), lambda s: s.agent_state == job_pb2.AGENT_STATE_SLEEPING
    )
    assert status.wake_time.ToDatetime(tzinfo=UTC) == wake_at


async def test_a_wake_time_in_the_past_is_not_reported(jobs_stub, redis, clock, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    past = clock.now() - timedelta(minutes=1)

    await redis.set(f"cofounder:agent:{job.job_id}:state", "sleeping", ex=90_000)
    await redis.set(f"cofounder:agent:{job.job_id}:wake_at", past.isoformat(), ex=60)

    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id), lambda s: s.agent_state == job_pb2.AGENT_STATE_SLEEPING
    )
    assert not status.HasField("wake_time")


async def test_expired_keys_fall_back_to_sql(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await redis.set(f"cofounder:agent:{job.job_id}:state", "working", px=300)
    await redis.set(f"cofounder:agent:{job.job_id}:budget_pct", "55", px=300)
    await eventually(
        lambda: status_of(jobs_stub, job.job_id), lambda s: s.agent_state == job_pb2.AGENT_STATE_WORKING
    )

    # The two keys were written (and so expire) a few ms apart: wait for both.
    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id),
        lambda s: s.agent_state == job_pb2.AGENT_STATE_UNSPECIFIED and not s.HasField("budget_percent"),
    )

    assert status.job_status == job_pb2.JOB_STATUS_QUEUED
    assert status.daily_budget_microdollars == 5_000_000


async def test_cancel_is_visible_in_status_at_once(jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    assert (await status_of(jobs_stub, job.job_id)).job_status == job_pb2.JOB_STATUS_QUEUED

    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    status = await status_of(jobs_stub, job.job_id)

    assert status.job_status == job_pb2.JOB_STATUS_CANCELLED
    assert status.outcome == job_pb2.JOB_OUTCOME_CANCELLED


async def test_a_finished_job_never_shows_a_stale_live_state(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    later = datetime.now(UTC) + timedelta(hours=1)

    await redis.set(f"cofounder:agent:{job.job_id}:state", "sleeping", ex=90_000)
    await redis.set(f"cofounder:agent:{job.job_id}:wake_at", later.isoformat(), ex=3600)
    await redis.set(f"cofounder:agent:{job.job_id}:budget_pct", "12", ex=90)

    status = await eventually(lambda: status_of(jobs_stub, job.job_id), lambda s: s.budget_percent == 12)
    assert status.agent_state == job_pb2.AGENT_STATE_UNSPECIFIED
    assert not status.HasField("wake_time")
    assert status.job_status == job_pb2.JOB_STATUS_CANCELLED


async def test_garbage_in_live_keys_reads_as_absent(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await redis.set(f"cofounder:agent:{job.job_id}:state", "dancing", ex=60)
    await redis.set(f"cofounder:agent:{job.job_id}:budget_pct", "lots", ex=60)
    await redis.set(f"cofounder:agent:{job.job_id}:wake_at", "tomorrow-ish", ex=60)

    status = await status_of(jobs_stub, job.job_id)

    assert status.agent_state == job_pb2.AGENT_STATE_UNSPECIFIED
    assert not status.HasField("budget_percent")
    assert not status.HasField("wake_time")


async def test_a_lost_summary_is_rebuilt_from_sql(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    summary_key = f"cofounder:job:{job.job_id}:summary"
    assert await redis.exists(summary_key)

    await redis.delete(summary_key)
    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id), lambda s: s.job_status == job_pb2.JOB_STATUS_CANCELLED
    )

    assert status.outcome == job_pb2.JOB_OUTCOME_CANCELLED
    assert await redis.exists(summary_key)


async def test_a_corrupt_summary_is_rebuilt_from_sql(jobs_stub, redis, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    summary_key = f"cofounder:job:{job.job_id}:summary"
    await redis.set(summary_key, "not json at all", ex=60)

    status = await eventually(
        lambda: status_of(jobs_stub, job.job_id), lambda s: s.job_status == job_pb2.JOB_STATUS_QUEUED
    )
    assert status.daily_budget_microdollars == 5_000_000
