"""JobRepository against a real database: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, update

from cofounder_server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from cofounder_server.domain.model import AgentSpec, AgentState, Job, JobFilter, JobOutcome, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.idempotency import request_fingerprint
from cofounder_server.store.jobs import JobCursor, JobRepository
from cofounder_server.store.models import IdempotencyKeyRow, JobRow
from cofounder_server.store.runs import RunRepository

from .support import T0, new_job, submit_key, wait_until_blocked

ANY = JobFilter()


async def count_rows(database: Database, model: type[JobRow] | type[IdempotencyKeyRow]) -> int:
    async with database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def set_status(
    database: Database, job_id: str, status: JobStatus, agent_state: AgentState | None = None
) -> None:
    """Move a job to ``status`` (and ``agent_state``) directly, as the executor does."""
    async with database.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.job_id == job_id)
            .values(status=status.value, agent_state=None if agent_state is None else agent_state.value)
        )


async def cancel_job(jobs: JobRepository, job_id: str, **kwargs: Any) -> tuple[Job, list[Any]]:
    """Cancel; the job as committed and the events the cancel appended."""
    change = await jobs.cancel(job_id, **kwargs)
    assert change.job is not None
    return change.job, list(change.events)


async def create(jobs: JobRepository, now: datetime = T0, **overrides: Any) -> Job:
    request = new_job(**overrides)
    job, created = await jobs.create(
        request, request_id=None, fingerprint=request_fingerprint(request), now=now
    )
    assert created
    return job


# --- create and get ---------------------------------------------------------------------------


async def test_create_stores_a_queued_job_at_version_1(jobs: JobRepository) -> None:
    request = new_job()
    job, created = await jobs.create(request, request_id=None, fingerprint="f", now=T0)

    assert created
    assert job.status is JobStatus.QUEUED
    assert job.version == 1
    assert (job.owner_id, job.project_id, job.goal) == ("alice", "proj-1", "ship the landing page")
    assert job.daily_budget_microdollars == 5_000_000
    assert job.agent == request.agent
    assert job.labels == {"team": "growth"}
    assert (job.outcome, job.outcome_detail, job.agent_state, job.wake_at, job.end_time) == (
        None,
        "",
        None,
        None,
        None,
    )
    assert job.create_time == job.update_time == T0
    assert await jobs.get(job.job_id, owner_scope="alice") == job


async def test_create_gives_each_job_a_new_uuid(jobs: JobRepository) -> None:
    first = await create(jobs)
    second = await create(jobs)
    assert first.job_id != second.job_id
    assert len(first.job_id) == 36


async def test_values_round_trip_exactly(jobs: JobRepository) -> None:
    config = {"nested": {"list": [1, 2.5, None, True], "text": "ünïcode ✓"}, "empty": {}}
    job = await create(
        jobs,
        agent=AgentSpec(brain="b", model="", config=config),
        labels={"a": "1", "b": ""},
        daily_budget_microdollars=2**62,
    )
    stored = await jobs.get(job.job_id, owner_scope=None)
    assert stored is not None
    assert stored.agent.config == config
    assert stored.labels == {"a": "1", "b": ""}
    assert stored.daily_budget_microdollars == 2**62


async def test_times_are_stored_and_returned_as_aware_utc(jobs: JobRepository) -> None:
    plus_two = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    job = await create(jobs, now=plus_two)
    stored = await jobs.get(job.job_id, owner_scope=None)
    assert stored is not None
    for moment in (job.create_time, stored.create_time, stored.update_time):
        assert moment.tzinfo is UTC
        assert moment == plus_two
    assert stored.create_time.microsecond == 123456


async def test_naive_times_are_refused(jobs: JobRepository, database: Database) -> None:
    with pytest.raises(ValueError, match="naive"):
        await jobs.create(new_job(), request_id=None, fingerprint="f", now=datetime(2026, 1, 1))
    assert await count_rows(database, JobRow) == 0


async def test_get_unknown_job_is_none(jobs: JobRepository) -> None:
    assert await jobs.get("00000000-0000-0000-0000-000000000000", owner_scope=None) is None
    assert await jobs.get("not a uuid", owner_scope="alice") is None


async def test_other_owners_job_is_invisible_but_operator_sees_it(jobs: JobRepository) -> None:
    job = await create(jobs, owner_id="alice")
    assert await jobs.get(job.job_id, owner_scope="mallory") is None
    assert await jobs.get(job.job_id, owner_scope="alice") == job
    assert await jobs.get(job.job_id, owner_scope=None) == job


# --- idempotent create ------------------------------------------------------------------------


async def test_same_request_id_and_fingerprint_returns_the_first_job(
    jobs: JobRepository, database: Database
) -> None:
    request = new_job()
    fingerprint = request_fingerprint(request)
    first, first_created = await jobs.create(request, request_id="req-1", fingerprint=fingerprint, now=T0)
    again, again_created = await jobs.create(
        request, request_id="req-1", fingerprint=fingerprint, now=T0 + timedelta(minutes=5)
    )

    assert (bool(first_created), bool(again_created)) == (True, False)
    assert again == first
    assert await count_rows(database, JobRow) == 1
    assert await count_rows(database, IdempotencyKeyRow) == 1


async def test_reused_request_id_with_another_request_is_rejected(
    jobs: JobRepository, database: Database
) -> None:
    await jobs.create(new_job(goal="one"), request_id="req-1", fingerprint="fp-one", now=T0)
    with pytest.raises(AlreadyExists) as raised:
        await jobs.create(new_job(goal="two"), request_id="req-1", fingerprint="fp-two", now=T0)
    assert raised.value.reason == "REQUEST_ID_REUSED"
    assert await count_rows(database, JobRow) == 1


async def test_request_ids_are_scoped_by_owner(jobs: JobRepository) -> None:
    alice, _ = await jobs.create(new_job(owner_id="alice"), request_id="req-1", fingerprint="a", now=T0)
    bob, created = await jobs.create(new_job(owner_id="bob"), request_id="req-1", fingerprint="b", now=T0)
    assert created
    assert bob.job_id != alice.job_id
    assert bob.owner_id == "bob"


async def test_without_request_id_every_create_is_new(jobs: JobRepository, database: Database) -> None:
    request = new_job()
    for _ in range(2):
        _, created = await jobs.create(request, request_id=None, fingerprint="same", now=T0)
        assert created
    assert await count_rows(database, JobRow) == 2
    assert await count_rows(database, IdempotencyKeyRow) == 0


async def test_concurrent_creates_with_one_key_make_one_job(jobs: JobRepository, database: Database) -> None:
    request = new_job()
    results = await asyncio.gather(
        *(jobs.create(request, request_id="req-race", fingerprint="fp", now=T0) for _ in range(8))
    )

    assert {job.job_id for job, _ in results} == {results[0][0].job_id}
    assert sorted(bool(created) for _, created in results) == [False] * 7 + [True]
    assert await count_rows(database, JobRow) == 1


async def test_concurrent_creates_with_one_key_and_different_requests(
    jobs: JobRepository, database: Database
) -> None:
    results = await asyncio.gather(
        *(
            jobs.create(new_job(goal=f"goal {n}"), request_id="req-race", fingerprint=f"fp-{n}", now=T0)
            for n in range(6)
        ),
        return_exceptions=True,
    )

    created = [result for result in results if isinstance(result, tuple)]
    rejected = [result for result in results if isinstance(result, AlreadyExists)]
    assert len(created) == 1
    assert len(rejected) == 5
    assert await count_rows(database, JobRow) == 1


async def test_create_replays_a_key_committed_by_a_concurrent_transaction(
    jobs: JobRepository, database: Database
) -> None:
    """The losing side of a same-key race: the key appears after the loser started."""
    request = new_job()
    async with database.write() as session:
        winner = JobRow(
            job_id="11111111-1111-4111-8111-111111111111",
            owner_id="alice",
            project_id="proj-1",
            goal=request.goal,
            daily_budget_microdollars=request.daily_budget_microdollars,
            agent_brain=request.agent.brain,
            agent_model=request.agent.model,
            agent_config=request.agent.config,
            labels=request.labels,
            status="queued",
            outcome=None,
            outcome_detail="",
            agent_state=None,
            wake_at=None,
            pending_escalations=[],
            create_time=T0,
            update_time=T0,
            end_time=None,
            version=1,
        )
        session.add(winner)
        session.add(submit_key(winner.job_id))
        await session.flush()
        # Started while the winner's transaction is open: it must wait for it, then replay.
        loser = asyncio.create_task(jobs.create(request, request_id="req-1", fingerprint="fp", now=T0))
        await wait_until_blocked(database, loser)

    job, created = await loser
    assert not created
    assert job.job_id == "11111111-1111-4111-8111-111111111111"
    assert await count_rows(database, JobRow) == 1


# --- list -------------------------------------------------------------------------------------


async def collect_pages(jobs: JobRepository, page_size: int, filter: JobFilter = ANY) -> list[list[Job]]:
    """Every page of alice's jobs, following the cursors to the end."""
    pages: list[list[Job]] = []
    cursor: JobCursor | None = None
    while True:
        page, cursor = await jobs.list(owner_scope="alice", filter=filter, page_size=page_size, after=cursor)
        pages.append(page)
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not terminate"


async def test_list_is_newest_first_with_job_id_breaking_ties(jobs: JobRepository) -> None:
    made = [await create(jobs, now=T0 + timedelta(seconds=n)) for n in range(4)]
    made += [await create(jobs, now=T0 + timedelta(seconds=10)) for _ in range(3)]

    page, cursor = await jobs.list(owner_scope="alice", filter=ANY, page_size=50, after=None)

    expected = sorted(made, key=lambda job: (job.create_time, job.job_id), reverse=True)
    assert [job.job_id for job in page] == [job.job_id for job in expected]
    assert cursor is None


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 8])
async def test_pages_cover_every_job_once(jobs: JobRepository, page_size: int) -> None:
    # Seven jobs, three of them sharing one create_time, so page edges fall inside ties.
    made = [await create(jobs, now=T0 + timedelta(seconds=n)) for n in range(4)]
    made += [await create(jobs, now=T0 + timedelta(seconds=2)) for _ in range(3)]

    pages = await collect_pages(jobs, page_size)

    expected = sorted(made, key=lambda job: (job.create_time, job.job_id), reverse=True)
    assert [job.job_id for page in pages for job in page] == [job.job_id for job in expected]
    assert all(len(page) == page_size for page in pages[:-1])
    # Seven rows in pages of seven end with the first page: no empty trailing page.
    assert len(pages) == -(-7 // page_size)


async def test_cursor_is_the_last_row_key(jobs: JobRepository) -> None:
    for n in range(3):
        await create(jobs, now=T0 + timedelta(seconds=n))
    page, cursor = await jobs.list(owner_scope="alice", filter=ANY, page_size=2, after=None)
    assert cursor == (page[-1].create_time, page[-1].job_id)
    assert cursor[0].tzinfo is UTC


async def test_jobs_created_after_the_first_page_do_not_shift_later_pages(jobs: JobRepository) -> None:
    made = [await create(jobs, now=T0 + timedelta(seconds=n)) for n in range(4)]
    first, cursor = await jobs.list(owner_scope="alice", filter=ANY, page_size=2, after=None)
    await create(jobs, now=T0 + timedelta(hours=1))

    second, end = await jobs.list(owner_scope="alice", filter=ANY, page_size=2, after=cursor)

    assert [job.job_id for job in first + second] == [job.job_id for job in reversed(made)]
    assert end is None


async def test_list_filters_by_status_and_project(jobs: JobRepository, database: Database) -> None:
    queued = await create(jobs, project_id="p1", now=T0)
    running = await create(jobs, project_id="p1", now=T0 + timedelta(seconds=1))
    ready = await create(jobs, project_id="p2", now=T0 + timedelta(seconds=2))
    await set_status(database, running.job_id, JobStatus.RUNNING)
    await set_status(database, ready.job_id, JobStatus.READY)

    async def ids(filter: JobFilter) -> list[str]:
        page, _ = await jobs.list(owner_scope="alice", filter=filter, page_size=10, after=None)
        return [job.job_id for job in page]

    assert await ids(JobFilter(statuses=frozenset({JobStatus.RUNNING}))) == [running.job_id]
    assert await ids(JobFilter(statuses=frozenset({JobStatus.QUEUED, JobStatus.READY}))) == [
        ready.job_id,
        queued.job_id,
    ]
    assert await ids(JobFilter(project_id="p1")) == [running.job_id, queued.job_id]
    assert await ids(JobFilter(statuses=frozenset({JobStatus.QUEUED}), project_id="p2")) == []
    assert await ids(JobFilter(statuses=frozenset({JobStatus.READY}), project_id="p2")) == [ready.job_id]
    assert await ids(JobFilter(project_id="nope")) == []


async def test_filtered_pagination(jobs: JobRepository, database: Database) -> None:
    made = [await create(jobs, now=T0 + timedelta(seconds=n)) for n in range(9)]
    for job in made[::2]:
        await set_status(database, job.job_id, JobStatus.FAILED)

    pages = await collect_pages(jobs, 2, JobFilter(statuses=frozenset({JobStatus.FAILED})))

    assert [job.job_id for page in pages for job in page] == [job.job_id for job in reversed(made[::2])]


async def test_list_is_scoped_by_owner(jobs: JobRepository) -> None:
    alice = await create(jobs, owner_id="alice", now=T0)
    bob = await create(jobs, owner_id="bob", now=T0 + timedelta(seconds=1))

    alices, _ = await jobs.list(owner_scope="alice", filter=ANY, page_size=10, after=None)
    nobody, _ = await jobs.list(owner_scope="mallory", filter=ANY, page_size=10, after=None)
    everyone, _ = await jobs.list(owner_scope=None, filter=ANY, page_size=10, after=None)

    assert [job.job_id for job in alices] == [alice.job_id]
    assert nobody == []
    assert [job.job_id for job in everyone] == [bob.job_id, alice.job_id]


async def test_list_rejects_a_non_positive_page_size(jobs: JobRepository) -> None:
    with pytest.raises(ValueError, match="page_size"):
        await jobs.list(owner_scope=None, filter=ANY, page_size=0, after=None)


# --- cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
async def test_cancel_an_active_job(jobs: JobRepository, database: Database, status: JobStatus) -> None:
    job = await create(jobs)
    await set_status(database, job.job_id, status, AgentState.WORKING)
    later = T0 + timedelta(minutes=3)

    cancelled, changed = await cancel_job(
        jobs, job.job_id, owner_scope="alice", reason="user asked", now=later
    )

    assert changed
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.outcome is JobOutcome.CANCELLED
    assert cancelled.outcome_detail == "user asked"
    assert cancelled.end_time == cancelled.update_time == later
    assert cancelled.version == job.version + 1
    assert cancelled.agent_state is AgentState.WORKING
    assert cancelled.create_time == job.create_time
    assert await jobs.get(job.job_id, owner_scope="alice") == cancelled


async def test_cancel_twice_changes_nothing_the_second_time(jobs: JobRepository) -> None:
    job = await create(jobs)
    first, _ = await cancel_job(jobs, job.job_id, owner_scope="alice", reason="first", now=T0)
    second, changed = await cancel_job(
        jobs, job.job_id, owner_scope="alice", reason="second", now=T0 + timedelta(hours=1)
    )
    assert not changed
    assert second == first
    assert second.outcome_detail == "first"


@pytest.mark.parametrize("status", [JobStatus.READY, JobStatus.FAILED])
async def test_cancel_a_finished_job_fails(
    jobs: JobRepository, database: Database, status: JobStatus
) -> None:
    job = await create(jobs)
    await set_status(database, job.job_id, status)
    before = await jobs.get(job.job_id, owner_scope=None)

    with pytest.raises(FailedPrecondition) as raised:
        await cancel_job(jobs, job.job_id, owner_scope="alice", reason="too late", now=T0)

    assert raised.value.reason == "JOB_ALREADY_FINISHED"
    assert await jobs.get(job.job_id, owner_scope=None) == before


async def test_cancel_missing_or_foreign_job_is_not_found(jobs: JobRepository) -> None:
    job = await create(jobs, owner_id="alice")
    with pytest.raises(NotFound):
        await cancel_job(jobs, job.job_id, owner_scope="mallory", reason="x", now=T0)
    with pytest.raises(NotFound):
        await cancel_job(jobs, "00000000-0000-0000-0000-000000000000", owner_scope=None, reason="x", now=T0)
    assert await jobs.get(job.job_id, owner_scope=None) == job


async def test_operator_can_cancel_any_job(jobs: JobRepository) -> None:
    job = await create(jobs, owner_id="alice")
    cancelled, changed = await cancel_job(jobs, job.job_id, owner_scope=None, reason="ops", now=T0)
    assert changed
    assert cancelled.status is JobStatus.CANCELLED


async def test_concurrent_cancels_change_the_job_once(jobs: JobRepository) -> None:
    job = await create(jobs)
    results = await asyncio.gather(
        *(cancel_job(jobs, job.job_id, owner_scope="alice", reason=f"r{n}", now=T0) for n in range(6))
    )
    assert sorted(bool(changed) for _, changed in results) == [False] * 5 + [True]
    final = await jobs.get(job.job_id, owner_scope=None)
    assert final is not None
    assert final.version == 2


async def test_cancels_with_one_request_id_change_the_job_once_and_replay(
    jobs: JobRepository, database: Database
) -> None:
    job = await create(jobs)
    request = {"owner_scope": "alice", "reason": "r", "request_id": "k1", "fingerprint": "f1", "now": T0}
    results = await asyncio.gather(*(cancel_job(jobs, job.job_id, **request) for _ in range(6)))
    assert sorted(bool(changed) for _, changed in results) == [False] * 5 + [True]
    assert all(cancelled == results[0][0] for cancelled, _ in results)
    assert await count_rows(database, IdempotencyKeyRow) == 1


async def test_a_cancel_request_id_reused_for_another_request_is_rejected(jobs: JobRepository) -> None:
    job, other = await create(jobs), await create(jobs)
    await cancel_job(
        jobs, job.job_id, owner_scope="alice", reason="r", request_id="k2", fingerprint="f1", now=T0
    )
    with pytest.raises(AlreadyExists):
        await cancel_job(
            jobs, other.job_id, owner_scope="alice", reason="r", request_id="k2", fingerprint="f2", now=T0
        )
    assert await jobs.get(other.job_id, owner_scope=None) == other


async def test_a_refused_cancel_keeps_no_request_id(jobs: JobRepository, database: Database) -> None:
    job = await create(jobs)
    await set_status(database, job.job_id, JobStatus.READY)
    with pytest.raises(FailedPrecondition):
        await cancel_job(
            jobs, job.job_id, owner_scope="alice", reason="r", request_id="k3", fingerprint="f1", now=T0
        )
    assert await count_rows(database, IdempotencyKeyRow) == 0


async def test_cancel_waiting_on_a_concurrent_finish_does_not_overwrite_it(
    jobs: JobRepository, database: Database
) -> None:
    job = await create(jobs)
    async with database.write() as session:
        await session.execute(
            update(JobRow)
            .where(JobRow.job_id == job.job_id)
            .values(status=JobStatus.READY.value, outcome=JobOutcome.COMPLETED.value, version=2)
        )
        cancel = asyncio.create_task(cancel_job(jobs, job.job_id, owner_scope="alice", reason="late", now=T0))
        await wait_until_blocked(database, cancel)

    with pytest.raises(FailedPrecondition):
        await cancel
    final = await jobs.get(job.job_id, owner_scope=None)
    assert final is not None
    assert (final.status, final.outcome, final.version) == (JobStatus.READY, JobOutcome.COMPLETED, 2)


async def test_every_change_increments_version_by_one(jobs: JobRepository, database: Database) -> None:
    job = await create(jobs)
    runs = RunRepository(database, EventLogRepository(database, retention_events=1000))
    claimed = await runs.claim(job.job_id, "runner", now=T0)
    assert claimed is not None
    assert claimed.job is not None
    versions = [job.version, claimed.job.version]
    for n, state in enumerate((AgentState.SLEEPING, AgentState.WORKING)):
        changed = await runs.set_agent_state(
            job.job_id, state=state, wake_at=None, events=(), now=T0 + timedelta(seconds=n)
        )
        assert changed is not None
        assert changed.job is not None
        versions.append(changed.job.version)
    cancelled, _ = await cancel_job(jobs, job.job_id, owner_scope=None, reason="done", now=T0)
    versions.append(cancelled.version)
    assert versions == [1, 2, 3, 4, 5]


async def test_json_columns_keep_what_json_can_say(jobs: JobRepository) -> None:
    """Agent config (and conversations) are arbitrary JSON: integers past 64 bits, unicode
    and nesting come back as they went in."""
    config = {"big": 2**70, "negative": -(2**65), "text": "naïve ✓", "nested": [{"a": [1.5, None, True]}]}
    created, _ = await jobs.create(
        new_job(agent=AgentSpec(brain="scripted", model="m", config=config)),
        request_id=None,
        fingerprint="f",
        now=T0,
    )
    assert (await jobs.get(created.job_id, owner_scope=None)).agent.config == config
