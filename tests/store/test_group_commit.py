"""CheckpointStore.commit_iterations, the executor's group commit, on every backend (SQLite
runs it in a worker thread on a connection of its own; PostgreSQL through SQLAlchemy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cofounder_server.domain.events import AgentThinking, PhaseStarted
from cofounder_server.store.checkpoints import CheckpointStore
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository, job_stream
from cofounder_server.store.iterations import IterationConflict, IterationRecord, ModelCall
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.models import EventCounterRow, JobEventRow, UsageLedgerRow
from cofounder_server.store.runs import RunRepository

from .support import T0, new_job

RUNNER = "runner-a"
WINDOW = datetime(2026, 3, 1, tzinfo=UTC)
ASSISTANT = {"role": "assistant", "text": "é ✓"}
TOOL = {"role": "tool", "big": 2**70}  # beyond 64 bits: JSON allows it


class _Stores:
    """The repositories an executor's iterations touch, on one database."""

    def __init__(self, database: Database, retention: int) -> None:
        self.event_log = EventLogRepository(database, retention_events=retention)
        self.runs = RunRepository(database, self.event_log)
        self.checkpoints = CheckpointStore(database, self.event_log)
        self.ledger = LedgerRepository(database)
        self.commit_iterations = self.checkpoints.commit_iterations
        self.checkpoint = self.checkpoints.checkpoint
        self.budget_of = self.ledger.budget_of
        self.close = self.checkpoints.close


def _store(database: Database, retention: int = 1000) -> _Stores:
    return _Stores(database, retention)


async def _running_job(database: Database, store: _Stores, runner: str = RUNNER) -> str:
    job, _ = await JobRepository(database, store.event_log).create(
        new_job(), request_id=None, fingerprint="f", now=T0
    )
    claimed = await store.runs.claim(job.job_id, runner, now=T0)
    assert claimed is not None
    return job.job_id


def _record(job_id: str, iteration: int, *, events: int = 2, cost: int = 700) -> IterationRecord:
    return IterationRecord(
        job_id=job_id,
        iteration=iteration,
        call=ModelCall(
            window_start=WINDOW, model="m", input_tokens=1200, output_tokens=150, cost_microdollars=cost
        ),
        new_messages=[{"role": "assistant", "text": "é ✓"}, {"role": "tool", "big": 2**70}],
        first_position=2 * iteration - 2,
        loop_state={"phase": "build", "recent": ["narrate\n{}"]},
        time=T0 + timedelta(seconds=iteration),
        events=[AgentThinking(iteration=iteration, text=f"t{n}") for n in range(events - 1)]
        + [PhaseStarted(phase="build")],
    )


async def _stored_events(database: Database, job_id: str) -> list[tuple[int, str]]:
    async with database.read() as session:
        rows = await session.execute(
            select(JobEventRow.sequence, JobEventRow.type)
            .where(JobEventRow.job_id == job_id)
            .order_by("sequence")
        )
        return [(int(sequence), str(type_)) for sequence, type_ in rows]


async def test_a_batch_is_stored_whole_and_reads_back(database: Database) -> None:
    store = _store(database)
    try:
        first, second = await _running_job(database, store), await _running_job(database, store)
        before = await _stored_events(database, first)  # the claim's status change
        committed = await store.commit_iterations(
            [_record(first, 1), _record(second, 1, events=3)], runner_id=RUNNER, now=T0
        )
        assert committed.accepted == {first, second}
        assert [(e.job_id, e.sequence) for e in committed.events] == [
            (first, len(before) + 1),
            (first, len(before) + 2),
            (second, len(before) + 1),
            (second, len(before) + 2),
            (second, len(before) + 3),
        ]
        assert await _stored_events(database, first) == [
            *before,
            (len(before) + 1, "agent.thinking"),
            (len(before) + 2, "gsd.phase.started"),
        ]
        checkpoint = await store.checkpoint(first)
        assert checkpoint is not None
        assert checkpoint.iteration == 1
        assert checkpoint.state == {"phase": "build", "recent": ["narrate\n{}"]}
        assert checkpoint.messages == [ASSISTANT, TOOL]
        assert await store.budget_of(first, WINDOW) == (700, 0)
        page = await store.event_log.read_job_events(first, after=len(before), limit=10)
        assert [e.payload for e in page.events] == list(_record(first, 1).events)
        assert all(e.time == T0 for e in page.events)
        async with database.read() as session:
            times = list(
                await session.scalars(select(UsageLedgerRow.time).where(UsageLedgerRow.job_id == first))
            )
        assert times == [T0 + timedelta(seconds=1)]
    finally:
        await store.close()


async def test_only_running_jobs_of_this_runner_are_accepted(database: Database) -> None:
    store = _store(database)
    try:
        ours, cancelled, theirs = (
            await _running_job(database, store),
            await _running_job(database, store),
            await _running_job(database, store, runner="runner-b"),
        )
        await JobRepository(database, store.event_log).cancel(cancelled, owner_scope=None, reason="", now=T0)
        before = {job: await _stored_events(database, job) for job in (cancelled, theirs)}
        committed = await store.commit_iterations(
            [_record(ours, 1), _record(cancelled, 1), _record(theirs, 1)], runner_id=RUNNER, now=T0
        )
        assert committed.accepted == {ours}
        assert {e.job_id for e in committed.events} == {ours}
        # The cancelled job's model call was made: it is paid for. Another runner's is not ours.
        assert await store.budget_of(cancelled, WINDOW) == (700, 0)
        assert await store.budget_of(theirs, WINDOW) == (0, 0)
        for job in (cancelled, theirs):
            assert await store.checkpoint(job) is None
            assert await _stored_events(database, job) == before[job]
    finally:
        await store.close()


async def test_a_stream_without_a_counter_starts_at_one(database: Database) -> None:
    store = _store(database)
    try:
        job = await _running_job(database, store)
        async with database.write() as session:  # as if the claim had published nothing
            await session.execute(JobEventRow.__table__.delete().where(JobEventRow.job_id == job))
            await session.execute(
                EventCounterRow.__table__.delete().where(EventCounterRow.stream == job_stream(job))
            )
        committed = await store.commit_iterations([_record(job, 1)], runner_id=RUNNER, now=T0)
        assert [e.sequence for e in committed.events] == [1, 2]
        committed = await store.commit_iterations([_record(job, 2)], runner_id=RUNNER, now=T0)
        assert [e.sequence for e in committed.events] == [3, 4]
    finally:
        await store.close()


async def test_retention_prunes_through_the_group_commit(database: Database) -> None:
    store = _store(database, retention=10)
    try:
        job = await _running_job(database, store)
        for iteration in range(1, 16):
            await store.commit_iterations([_record(job, iteration)], runner_id=RUNNER, now=T0)
        sequences = [sequence for sequence, _ in await _stored_events(database, job)]
        last = sequences[-1]
        assert last == 32  # the submission and claim events, then 2 per iteration
        bounds = await store.event_log.job_bounds(job)
        assert bounds.last_sequence == last
        assert 0 < bounds.pruned_through <= last - 10
        assert sequences == list(range(bounds.pruned_through + 1, last + 1))
    finally:
        await store.close()


async def test_an_iteration_recorded_before_fails_the_whole_batch(database: Database) -> None:
    store = _store(database)
    try:
        first, second = await _running_job(database, store), await _running_job(database, store)
        await store.commit_iterations([_record(first, 1)], runner_id=RUNNER, now=T0)
        before = await _stored_events(database, second)
        with pytest.raises(IterationConflict):
            await store.commit_iterations([_record(second, 1), _record(first, 1)], runner_id=RUNNER, now=T0)
        assert await store.budget_of(second, WINDOW) == (0, 0)
        assert await store.checkpoint(second) is None
        assert await _stored_events(database, second) == before
        committed = await store.commit_iterations([_record(second, 1)], runner_id=RUNNER, now=T0)
        assert committed.accepted == {second}
    finally:
        await store.close()
