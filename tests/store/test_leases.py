"""Claims under runner leases: a running job is claimable only when no live runner holds it,
and claiming it is bookkeeping (no version bump, no event)."""

from __future__ import annotations

from datetime import timedelta

from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.runners import RunnerLeases
from cofounder_server.store.runs import RunRepository

from .support import T0, new_job

LEASE = timedelta(seconds=5)
PARKED = {AgentState.SLEEPING, AgentState.WAITING_FOR_INPUT}


async def _claimed(database: Database, runs: RunRepository, runner: str) -> str:
    job, _ = await JobRepository(database, EventLogRepository(database, retention_events=1000)).create(
        new_job(), request_id=None, fingerprint="f", now=T0
    )
    await RunnerLeases(database).renew(runner, now=T0, lease_until=T0 + LEASE)
    change = await runs.claim(job.job_id, runner, now=T0)
    assert change is not None
    assert change.job is not None
    assert change.job.status is JobStatus.RUNNING
    return job.job_id


async def test_a_live_runners_job_is_not_claimable_an_expired_ones_is(database: Database) -> None:
    runs = RunRepository(database, EventLogRepository(database, retention_events=1000))
    leases = RunnerLeases(database)
    job_id = await _claimed(database, runs, "runner-a")
    alive = T0 + LEASE
    assert await runs.orphaned("runner-b", parked=PARKED, expired=[], limit=10) == []
    assert await runs.claim(job_id, "runner-b", now=alive) is None

    later = alive + timedelta(seconds=1)
    expired = await leases.expired("runner-b", now=later)
    assert expired == ["runner-a"]
    assert await runs.orphaned("runner-b", parked=PARKED, expired=expired, limit=10) == [job_id]
    version = (await runs.get(job_id)).version  # type: ignore[union-attr]
    taken = await runs.claim(job_id, "runner-b", now=later)
    assert taken is not None
    assert not taken.events
    assert taken.job is not None
    assert taken.job.version == version
    # Its own job is never offered to a runner as another's, even when its lease looks expired.
    assert await runs.orphaned("runner-b", parked=PARKED, expired=["runner-b"], limit=10) == []
    # The runner takes its own job back (after a restart) whatever its lease says.
    assert await runs.claim(job_id, "runner-b", now=later) is not None


async def test_only_awake_running_jobs_are_orphaned_parked_and_queued_ones_are_claimed_otherwise(
    database: Database,
) -> None:
    runs = RunRepository(database, EventLogRepository(database, retention_events=1000))
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    await jobs.create(new_job(), request_id=None, fingerprint="f", now=T0)
    awake = await _claimed(database, runs, "runner-gone")
    asleep = await _claimed(database, runs, "runner-gone")
    await runs.set_agent_state(
        asleep, state=AgentState.SLEEPING, wake_at=T0 + timedelta(hours=1), events=[], now=T0
    )
    expired = ["runner-gone"]
    assert await runs.orphaned("runner-b", parked=PARKED, expired=expired, limit=10) == [awake]
    assert await runs.orphaned("runner-b", parked=PARKED, expired=expired, limit=0) == []
