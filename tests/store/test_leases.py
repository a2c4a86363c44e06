"""Lease renewal: extends this runner's running jobs and names the ones it no longer holds."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.models import JobRow
from cofounder_server.store.runs import RunRepository

from .support import T0, new_job


async def _claimed(database: Database, store: RunRepository, runner: str) -> str:
    job, _ = await JobRepository(database, EventLogRepository(database, retention_events=1000)).create(
        new_job(), request_id=None, fingerprint="f", now=T0
    )
    assert await store.claim(job.job_id, runner, now=T0, lease_until=T0 + timedelta(minutes=1))
    return job.job_id


async def _lease(database: Database, job_id: str) -> object:
    async with database.read() as session:
        return await session.scalar(select(JobRow.lease_expires_at).where(JobRow.job_id == job_id))


async def test_renew_extends_held_leases_and_names_the_lost_ones(database: Database) -> None:
    store = RunRepository(database, EventLogRepository(database, retention_events=1000))
    held, cancelled, taken = (
        await _claimed(database, store, "runner-a"),
        await _claimed(database, store, "runner-a"),
        await _claimed(database, store, "runner-b"),
    )
    other_runners_job_lease = await _lease(database, taken)
    await JobRepository(database, EventLogRepository(database, retention_events=1000)).cancel(
        cancelled, owner_scope=None, reason="", now=T0
    )
    later = T0 + timedelta(minutes=5)

    lost = await store.renew("runner-a", [held, cancelled, taken], now=T0, lease_until=later)

    assert lost == {cancelled, taken}
    assert await _lease(database, held) == later
    assert await _lease(database, taken) == other_runners_job_lease


async def test_renew_of_nothing_touches_nothing(database: Database) -> None:
    store = RunRepository(database, EventLogRepository(database, retention_events=1000))
    held = await _claimed(database, store, "runner-a")
    before = await _lease(database, held)
    assert await store.renew("runner-a", [], now=T0, lease_until=T0 + timedelta(minutes=5)) == set()
    assert await _lease(database, held) == before
