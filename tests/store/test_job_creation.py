"""Job creation in batches (``JobRepository.create_many``): SQLite always, PostgreSQL when
configured. One transaction for the batch, and every request decided as if alone."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import func, select

from cofounder_server.domain.errors import AlreadyExists, DomainError, NotFound
from cofounder_server.domain.events import JobStatusChanged
from cofounder_server.domain.model import Job, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import FLEET_STREAM, EventLogRepository, job_stream
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository, _new_row
from cofounder_server.store.models import EventCounterRow, IdempotencyKeyRow, JobEventRow, JobRow, table_of

from .support import T0, new_job, submit_key


@pytest.fixture
def event_log(database: Database) -> EventLogRepository:
    return EventLogRepository(database, retention_events=1000)


async def count(database: Database, model: type[JobRow] | type[IdempotencyKeyRow] | type[JobEventRow]) -> int:
    async with database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def created(outcome: tuple[Job, list[object]] | DomainError) -> tuple[Job, list[object]]:
    assert not isinstance(outcome, DomainError), outcome
    job, events = outcome
    return job, list(events)


async def test_a_batch_creates_each_job_queued_at_version_1_with_its_event_at_sequence_1(
    jobs: JobRepository, database: Database
) -> None:
    batch = [JobCreation(new_job(goal=f"goal {n}"), None, f"fp-{n}") for n in range(5)]
    outcomes = [created(outcome) for outcome in await jobs.create_many(batch, now=T0)]

    assert [job.goal for job, _ in outcomes] == [f"goal {n}" for n in range(5)]
    assert len({job.job_id for job, _ in outcomes}) == 5
    for job, events in outcomes:
        assert (job.status, job.version, job.create_time) == (JobStatus.QUEUED, 1, T0)
        assert await jobs.get(job.job_id, owner_scope=None) == job
        [event] = events
        assert (event.job_id, event.sequence, event.time) == (job.job_id, 1, T0)
        assert event.payload == JobStatusChanged(status=JobStatus.QUEUED)
    async with database.read() as session:
        counters = dict(
            (await session.execute(select(EventCounterRow.stream, EventCounterRow.last_sequence))).all()
        )
    # Each new job is also a change of the fleet feed, in the batch's order.
    assert counters == {**{job_stream(job.job_id): 1 for job, _ in outcomes}, FLEET_STREAM: 5}
    assert [events[0].fleet_sequence for _, events in outcomes] == [1, 2, 3, 4, 5]
    assert await count(database, JobEventRow) == 5


async def test_one_key_twice_in_a_batch_makes_one_job_for_both(
    jobs: JobRepository, database: Database
) -> None:
    request = new_job()
    first, again = await jobs.create_many(
        [JobCreation(request, "req-1", "fp"), JobCreation(request, "req-1", "fp")], now=T0
    )

    (job, events), (same, none) = created(first), created(again)
    assert same == job
    assert (len(events), none) == (1, [])
    assert await count(database, JobRow) == 1
    assert await count(database, IdempotencyKeyRow) == 1


async def test_a_reused_key_in_a_batch_is_refused_alone(jobs: JobRepository, database: Database) -> None:
    stored, _ = await jobs.create(new_job(goal="stored"), request_id="old", fingerprint="fp-old", now=T0)
    outcomes = await jobs.create_many(
        [
            JobCreation(new_job(goal="one"), "req-1", "fp-one"),
            JobCreation(new_job(goal="two"), "req-1", "fp-two"),  # same key, another request
            JobCreation(new_job(goal="other"), "old", "fp-other"),  # a stored key, another request
            JobCreation(new_job(goal="stored"), "old", "fp-old"),  # a retry of the stored one
            JobCreation(new_job(goal="free"), None, "fp-free"),
        ],
        now=T0,
    )

    one, two, other, retry, free = outcomes
    assert created(one)[0].goal == "one"
    for refused in (two, other):
        assert isinstance(refused, AlreadyExists)
        assert refused.reason == "REQUEST_ID_REUSED"
    assert created(retry) == (stored, [])
    assert created(free)[0].goal == "free"
    assert await count(database, JobRow) == 3


async def test_keys_are_scoped_by_owner_within_a_batch(jobs: JobRepository) -> None:
    alice, bob = await jobs.create_many(
        [
            JobCreation(new_job(owner_id="alice"), "req-1", "fp-a"),
            JobCreation(new_job(owner_id="bob"), "req-1", "fp-b"),
        ],
        now=T0,
    )
    assert created(alice)[0].owner_id == "alice"
    assert created(bob)[0].owner_id == "bob"
    assert created(alice)[0].job_id != created(bob)[0].job_id


async def test_a_key_whose_job_is_gone_is_not_found(jobs: JobRepository, database: Database) -> None:
    async with database.write() as session:
        session.add(submit_key("11111111-1111-4111-8111-111111111111"))
    gone, fresh = await jobs.create_many(
        [JobCreation(new_job(), "req-1", "fp"), JobCreation(new_job(), None, "fp")], now=T0
    )
    assert isinstance(gone, NotFound)
    assert created(fresh)[0].status is JobStatus.QUEUED


async def test_sqlite_stores_the_bytes_sqlalchemy_stores(
    jobs: JobRepository, event_log: EventLogRepository, database: Database
) -> None:
    """The batch writes through Core in the writer thread's own connection; the ORM on the
    pool's connections is the reference."""
    if database.dialect_name != "sqlite":
        pytest.skip("reads the SQLite file's bytes")
    request = new_job(labels={"team": "growth", "ünï": "✓"})
    job, _ = await jobs.create(request, request_id="req-1", fingerprint="fp", now=T0)
    reference = _new_row(request, T0)
    reference.job_id = "11111111-1111-4111-8111-111111111111"
    async with database.write() as session:
        session.add(reference)
    await event_log.append_job_events(reference.job_id, [JobStatusChanged(status=JobStatus.QUEUED)], now=T0)

    path = database.engine.url.database
    assert path
    with sqlite3.connect(path) as connection:
        for table, key in ((JobRow, "job_id"), (JobEventRow, "job_id"), (EventCounterRow, "stream")):
            # The fleet stamp differs by design: the reference row was not created as a change.
            skipped = {key, "fleet_sequence"}
            names = [column.name for column in table_of(table).columns if column.name not in skipped]
            quoted = ", ".join(f"quote({name})" for name in names)
            rows = {
                found: values
                for found, *values in connection.execute(f"SELECT {key}, {quoted} FROM {table.__tablename__}")
            }
            ours, theirs = (
                (job.job_id, reference.job_id)
                if key == "job_id"
                else map(job_stream, (job.job_id, reference.job_id))
            )
            assert rows[ours] == rows[theirs], table.__tablename__
    assert await jobs.get(job.job_id, owner_scope=None) == job
