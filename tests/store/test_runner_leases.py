"""Runner leases: one row per executor process, renewed in one statement, expired leases
visible to the others, and rows forgotten an hour after no running job names them."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.models import JobRow
from cofounder_server.store.runners import RunnerLeases

from .support import T0, new_job

LEASE = timedelta(seconds=5)


async def test_renewal_says_whether_the_lease_was_held_all_along(database: Database) -> None:
    leases = RunnerLeases(database)
    assert await leases.renew("runner-a", now=T0, lease_until=T0 + LEASE) is False  # new
    assert await leases.renew("runner-a", now=T0 + timedelta(seconds=4), lease_until=T0 + 2 * LEASE) is True
    # Renewed too late: the lease had lapsed (others may have taken jobs); it is taken anew.
    late = T0 + 3 * LEASE
    assert await leases.renew("runner-a", now=late, lease_until=late + LEASE) is False
    assert await leases.renew("runner-a", now=late + timedelta(seconds=1), lease_until=late + LEASE) is True


async def test_others_see_an_expired_lease_but_not_their_own(database: Database) -> None:
    leases = RunnerLeases(database)
    await leases.renew("runner-a", now=T0, lease_until=T0 + LEASE)
    await leases.renew("runner-b", now=T0, lease_until=T0 + 2 * LEASE)
    assert await leases.expired("runner-c", now=T0 + LEASE) == []
    later = T0 + LEASE + timedelta(seconds=1)
    assert await leases.expired("runner-c", now=later) == ["runner-a"]
    assert await leases.expired("runner-a", now=later) == []


async def test_an_expired_runner_is_forgotten_once_no_running_job_names_it(database: Database) -> None:
    leases = RunnerLeases(database)
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    job, _ = await jobs.create(new_job(), request_id=None, fingerprint="f", now=T0)
    async with database.write() as session:
        await session.execute(
            update(JobRow).where(JobRow.job_id == job.job_id).values(status="running", runner_id="runner-a")
        )
    await leases.renew("runner-a", now=T0, lease_until=T0 + LEASE)
    later = T0 + LEASE + timedelta(hours=1, seconds=1)
    assert await leases.forget_expired(now=T0) == 0  # alive
    assert await leases.forget_expired(now=T0 + 2 * LEASE) == 0  # expired only just
    assert await leases.forget_expired(now=later) == 0  # still named by a running job
    await jobs.cancel(job.job_id, owner_scope=None, reason="", now=later)
    assert await leases.forget_expired(now=later) == 1
    assert await leases.expired("runner-b", now=later) == []


async def running(database: Database, runner: str | None, state: AgentState, minute: int) -> str:
    """A running job held by ``runner`` whose agent is in ``state`` (created ``minute`` after T0)."""
    job, _ = await JobRepository(database, EventLogRepository(database, retention_events=1000)).create(
        new_job(), request_id=None, fingerprint="f", now=T0 + timedelta(minutes=minute)
    )
    async with database.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.job_id == job.job_id)
            .values(
                status="running", runner_id=runner, agent_state=state.value, wake_at=T0 + timedelta(days=1)
            )
        )
    return job.job_id


async def test_release_hands_every_running_job_over_and_ends_the_lease(database: Database) -> None:
    leases = RunnerLeases(database)
    await leases.renew("runner-a", now=T0, lease_until=T0 + LEASE)
    mine = [await running(database, "runner-a", AgentState.SLEEPING, n) for n in range(3)]
    other = await running(database, "runner-b", AgentState.WORKING, 3)
    assert [job.job_id for job in await leases.jobs_of("runner-a")] == mine
    await leases.release("runner-a")
    assert await leases.jobs_of("runner-a") == []
    assert [job.job_id for job in await leases.jobs_of("runner-b")] == [other]
    assert await leases.renew("runner-a", now=T0, lease_until=T0 + LEASE) is False


async def test_parked_jobs_of_dead_or_no_runner_are_claimed_in_bulk_oldest_first(database: Database) -> None:
    leases = RunnerLeases(database)
    dead = [await running(database, "runner-dead", AgentState.SLEEPING, n) for n in range(4)]
    unowned = await running(database, None, AgentState.WAITING_FOR_INPUT, 10)
    alive = await running(database, "runner-alive", AgentState.SLEEPING, 11)
    awake = await running(database, "runner-dead", AgentState.WORKING, 12)
    parked = {AgentState.SLEEPING, AgentState.WAITING_FOR_INPUT}

    first = await leases.claim_parked("runner-new", parked_states=parked, expired=["runner-dead"], limit=3)
    assert [job.job_id for job in first] == dead[:3]
    assert {(job.status, job.agent_state, job.runner_id) for job in first} == {
        (JobStatus.RUNNING, AgentState.SLEEPING, "runner-new")
    }
    assert first[0].wake_at == T0 + timedelta(days=1)
    rest = await leases.claim_parked("runner-new", parked_states=parked, expired=["runner-dead"], limit=100)
    assert [job.job_id for job in rest] == [dead[3], unowned]
    # Neither a live runner's parked job nor an awake agent is taken this way.
    assert (
        await leases.claim_parked("runner-new", parked_states=parked, expired=["runner-dead"], limit=100)
        == []
    )
    assert {job.job_id for job in await leases.jobs_of("runner-alive")} == {alive}
    assert {job.job_id for job in await leases.jobs_of("runner-dead")} == {awake}


async def test_versions_since_names_the_jobs_changed_in_the_window_with_their_versions(
    database: Database,
) -> None:
    leases = RunnerLeases(database)
    jobs = JobRepository(database, EventLogRepository(database, retention_events=1000))
    before = await running(database, "runner-a", AgentState.SLEEPING, 0)
    changed = await running(database, "runner-a", AgentState.SLEEPING, 1)
    versions = {
        job_id: (await leases.versions_since(T0 - timedelta(days=1)))[job_id] for job_id in (before, changed)
    }
    await jobs.cancel(changed, owner_scope=None, reason="", now=T0 + timedelta(hours=1))
    seen = await leases.versions_since(T0 + timedelta(minutes=30))
    assert seen == {changed: versions[changed] + 1}
    assert [(job.job_id, job.status) for job in await leases.jobs(list(seen))] == [
        (changed, JobStatus.CANCELLED)
    ]
    assert await leases.jobs([]) == []
