"""CheckpointStore.commit, the executor's group commit, and the batched claims and resumes of
RunRepository, on every backend (SQLite runs them in the writer thread; PostgreSQL through
``run_sync``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cofounder_server.domain.escalations import Escalation, EscalationStatus, EscalationTrigger
from cofounder_server.domain.events import (
    AgentSleeping,
    AgentThinking,
    AgentWaking,
    JobStatusChanged,
    PhaseStarted,
    SleepReason,
    WakeReason,
)
from cofounder_server.domain.model import AgentState, JobOutcome, JobStatus
from cofounder_server.store.checkpoints import CheckpointStore
from cofounder_server.store.database import Database
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository, job_stream
from cofounder_server.store.iterations import (
    Ending,
    Iteration,
    IterationConflict,
    ModelCall,
    Parking,
    RunRecord,
)
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.models import EventCounterRow, JobEventRow, UsageLedgerRow
from cofounder_server.store.runners import RunnerLeases
from cofounder_server.store.runs import Resumed, RunRepository, StillParked

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
        self.jobs = JobRepository(database, self.event_log)
        self.commit = self.checkpoints.commit
        self.checkpoint = self.checkpoints.checkpoint
        self.budget_of = self.ledger.budget_of


def _store(database: Database, retention: int = 1000) -> _Stores:
    return _Stores(database, retention)


async def _queued_job(store: _Stores, now: datetime = T0) -> str:
    job, _ = await store.jobs.create(new_job(), request_id=None, fingerprint="f", now=now)
    return job.job_id


async def _running_job(database: Database, store: _Stores, runner: str = RUNNER) -> str:
    job_id = await _queued_job(store)
    claimed = await store.runs.claim(job_id, runner, now=T0)
    assert claimed is not None
    return job_id


def _record(
    job_id: str,
    iteration: int,
    *,
    events: int = 2,
    cost: int = 700,
    transition: Ending | Parking | None = None,
) -> RunRecord:
    return RunRecord(
        job_id=job_id,
        time=T0 + timedelta(seconds=iteration),
        events=[AgentThinking(iteration=iteration, text=f"t{n}") for n in range(events - 1)]
        + [PhaseStarted(phase="build")],
        iteration=Iteration(
            number=iteration,
            call=ModelCall(
                window_start=WINDOW, model="m", input_tokens=1200, output_tokens=150, cost_microdollars=cost
            ),
            new_messages=[{"role": "assistant", "text": "é ✓"}, {"role": "tool", "big": 2**70}],
            first_position=2 * iteration - 2,
            loop_state={"phase": "build", "recent": ["narrate\n{}"]},
        ),
        transition=transition,
    )


COMPLETED = Ending(JobStatus.READY, JobOutcome.COMPLETED, "", AgentState.COMPLETED)


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
    first, second = await _running_job(database, store), await _running_job(database, store)
    before = await _stored_events(database, first)  # the claim's status change
    committed = await store.commit(
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
        times = list(await session.scalars(select(UsageLedgerRow.time).where(UsageLedgerRow.job_id == first)))
    assert times == [T0 + timedelta(seconds=1)]


async def test_only_running_jobs_of_this_runner_are_accepted(database: Database) -> None:
    store = _store(database)
    ours, cancelled, theirs = (
        await _running_job(database, store),
        await _running_job(database, store),
        await _running_job(database, store, runner="runner-b"),
    )
    await JobRepository(database, store.event_log).cancel(cancelled, owner_scope=None, reason="", now=T0)
    before = {job: await _stored_events(database, job) for job in (cancelled, theirs)}
    committed = await store.commit(
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


async def test_a_stream_without_a_counter_starts_at_one(database: Database) -> None:
    store = _store(database)
    job = await _running_job(database, store)
    async with database.write() as session:  # as if the claim had published nothing
        await session.execute(JobEventRow.__table__.delete().where(JobEventRow.job_id == job))
        await session.execute(
            EventCounterRow.__table__.delete().where(EventCounterRow.stream == job_stream(job))
        )
    committed = await store.commit([_record(job, 1)], runner_id=RUNNER, now=T0)
    assert [e.sequence for e in committed.events] == [1, 2]
    committed = await store.commit([_record(job, 2)], runner_id=RUNNER, now=T0)
    assert [e.sequence for e in committed.events] == [3, 4]


async def test_retention_prunes_through_the_group_commit(database: Database) -> None:
    store = _store(database, retention=10)
    job = await _running_job(database, store)
    for iteration in range(1, 16):
        await store.commit([_record(job, iteration)], runner_id=RUNNER, now=T0)
    sequences = [sequence for sequence, _ in await _stored_events(database, job)]
    last = sequences[-1]
    assert last == 32  # the submission and claim events, then 2 per iteration
    bounds = await store.event_log.job_bounds(job)
    assert bounds.last_sequence == last
    assert 0 < bounds.pruned_through <= last - 10
    assert sequences == list(range(bounds.pruned_through + 1, last + 1))


async def test_an_iteration_recorded_before_fails_the_whole_batch(database: Database) -> None:
    store = _store(database)
    first, second = await _running_job(database, store), await _running_job(database, store)
    await store.commit([_record(first, 1)], runner_id=RUNNER, now=T0)
    before = await _stored_events(database, second)
    with pytest.raises(IterationConflict):
        await store.commit([_record(second, 1), _record(first, 1)], runner_id=RUNNER, now=T0)
    assert await store.budget_of(second, WINDOW) == (0, 0)
    assert await store.checkpoint(second) is None
    assert await _stored_events(database, second) == before
    committed = await store.commit([_record(second, 1)], runner_id=RUNNER, now=T0)
    assert committed.accepted == {second}


async def test_an_ending_commits_with_its_iteration(database: Database) -> None:
    store = _store(database)
    done, going_on = await _running_job(database, store), await _running_job(database, store)
    before = await _stored_events(database, done)
    committed = await store.commit(
        [_record(done, 1, transition=COMPLETED), _record(going_on, 1)], runner_id=RUNNER, now=T0
    )
    assert committed.accepted == {done, going_on}
    assert set(committed.jobs) == {done}
    job = committed.jobs[done]
    assert (job.status, job.outcome, job.agent_state, job.end_time) == (
        JobStatus.READY,
        JobOutcome.COMPLETED,
        AgentState.COMPLETED,
        T0,
    )
    stored = await store.jobs.get(done, owner_scope=None)
    assert stored == job
    assert stored is not None
    assert stored.version == 3
    events = await _stored_events(database, done)
    assert events[len(before) :] == [
        (len(before) + 1, "agent.thinking"),
        (len(before) + 2, "gsd.phase.started"),
        (len(before) + 3, "job.status_changed"),
    ]
    change = committed.events[2].payload
    assert change == JobStatusChanged(
        status=JobStatus.READY, previous_status=JobStatus.RUNNING, outcome=JobOutcome.COMPLETED, detail=""
    )
    other = await store.jobs.get(going_on, owner_scope=None)
    assert other is not None
    assert other.status is JobStatus.RUNNING
    assert other.version == 2


async def test_a_parking_and_an_ending_without_an_iteration(database: Database) -> None:
    store = _store(database)
    sleeper, failing = await _running_job(database, store), await _running_job(database, store)
    midnight = WINDOW + timedelta(days=1)
    failed = Ending(JobStatus.FAILED, JobOutcome.MODEL_ERROR, "the brain failed", AgentState.ERROR)
    sleeping = AgentSleeping(wake_time=midnight, reason=SleepReason.BUDGET_THRESHOLD)
    committed = await store.commit(
        [
            _record(sleeper, 1, transition=Parking(AgentState.SLEEPING, midnight)),
            RunRecord(failing, T0, [], transition=failed),
        ],
        runner_id=RUNNER,
        now=T0,
    )
    assert committed.jobs[sleeper].agent_state is AgentState.SLEEPING
    assert committed.jobs[sleeper].wake_at == midnight
    assert committed.jobs[sleeper].status is JobStatus.RUNNING
    assert committed.jobs[failing].status is JobStatus.FAILED
    assert committed.jobs[failing].outcome_detail == "the brain failed"
    assert await store.budget_of(failing, WINDOW) == (0, 0)  # no model call recorded
    assert (await _stored_events(database, failing))[-1][1] == "job.status_changed"
    assert await store.checkpoint(failing) is None
    # A parking adds no event of its own: the run's record carries agent.sleeping.
    parked = await store.commit(
        [RunRecord(sleeper, T0, [sleeping], transition=Parking(AgentState.SLEEPING, midnight))],
        runner_id=RUNNER,
        now=T0,
    )
    assert [event.payload for event in parked.events] == [sleeping]


async def test_an_ending_waits_for_pending_escalations_to_be_withdrawn(database: Database) -> None:
    store = _store(database)
    job_id = await _running_job(database, store)
    escalation = Escalation(
        escalation_id="esc-1",
        job_id=job_id,
        owner_id="alice",
        status=EscalationStatus.PENDING,
        trigger=EscalationTrigger.AGENT_QUESTION,
        problem="Which colour?",
        create_time=T0,
    )
    escalations = EscalationRepository(database, store.event_log)
    assert await escalations.raise_for(job_id, RUNNER, [escalation], now=T0) is not None
    committed = await store.commit([_record(job_id, 1, transition=COMPLETED)], runner_id=RUNNER, now=T0)
    # The iteration is stored; the ending is left to the run, which withdraws them first.
    assert committed.accepted == {job_id}
    assert committed.deferred == {job_id}
    assert committed.jobs == {}
    job = await store.jobs.get(job_id, owner_scope=None)
    assert job is not None
    assert job.status is JobStatus.RUNNING
    assert await store.budget_of(job_id, WINDOW) == (700, 0)


async def test_the_oldest_queued_jobs_are_claimed_in_one_batch(database: Database) -> None:
    store = _store(database)
    elsewhere = await _running_job(database, store, runner="runner-b")
    first, second, third = [await _queued_job(store, T0 + timedelta(seconds=n)) for n in (1, 2, 3)]
    changes = await store.runs.claim_next_queued(RUNNER, limit=2, now=T0)
    assert [change.job_id for change in changes] == [first, second]  # oldest first, the running one not
    for change in changes:
        assert change.job is not None
        assert (change.job.status, change.job.agent_state, change.job.version) == (
            JobStatus.RUNNING,
            AgentState.WORKING,
            2,
        )
        assert [event.payload for event in change.events] == [
            JobStatusChanged(status=JobStatus.RUNNING, previous_status=JobStatus.QUEUED)
        ]
        assert [event.sequence for event in change.events] == [2]
    rest = await store.runs.claim_next_queued("runner-c", limit=10, now=T0)
    assert [change.job_id for change in rest] == [third]
    assert await store.runs.claim_next_queued("runner-c", limit=10, now=T0) == []
    assert await store.runs.claim_next_queued("runner-c", limit=0, now=T0) == []
    held = {
        runner: {job.job_id for job in await RunnerLeases(database).jobs_of(runner)}
        for runner in (RUNNER, "runner-b", "runner-c")
    }
    assert held == {RUNNER: {first, second}, "runner-b": {elsewhere}, "runner-c": {third}}


async def test_parked_agents_are_resumed_in_one_batch(database: Database) -> None:
    store = _store(database)
    midnight = WINDOW + timedelta(days=1)
    asleep, woken_before, waiting, cancelled = [await _running_job(database, store) for _ in range(4)]
    for job_id in (asleep, woken_before, cancelled):
        await store.commit(
            [_record(job_id, 1, transition=Parking(AgentState.SLEEPING, midnight))], runner_id=RUNNER, now=T0
        )
    await store.commit(
        [_record(waiting, 1, transition=Parking(AgentState.WAITING_FOR_INPUT, None))],
        runner_id=RUNNER,
        now=T0,
    )
    await store.runs.wake(woken_before, owner_scope=None, request_id="", top_up=0, window=WINDOW, now=T0)
    await store.jobs.cancel(cancelled, owner_scope=None, reason="", now=T0)
    outcome = await store.runs.resume_parked(
        [
            (asleep, AgentState.SLEEPING, WakeReason.SCHEDULED),
            (woken_before, AgentState.SLEEPING, WakeReason.SCHEDULED),
            (waiting, AgentState.WAITING_FOR_INPUT, WakeReason.REQUESTED),
            (cancelled, AgentState.SLEEPING, WakeReason.SCHEDULED),
        ],
        RUNNER,
        window=WINDOW,
        now=T0,
    )
    assert set(outcome) == {asleep, woken_before, waiting}
    resumed = outcome[asleep]
    assert isinstance(resumed, Resumed)
    assert resumed.change is not None
    assert resumed.job.agent_state is AgentState.WORKING
    assert resumed.job.wake_at is None
    assert [event.payload for event in resumed.change.events] == [AgentWaking(reason=WakeReason.SCHEDULED)]
    assert resumed.start.checkpoint is not None
    assert resumed.start.checkpoint.iteration == 1
    assert resumed.start.spend.spent == 700
    before = outcome[woken_before]
    assert isinstance(before, Resumed)
    assert before.change is None
    assert before.job.agent_state is AgentState.WORKING
    assert outcome[waiting] == StillParked(AgentState.WAITING_FOR_INPUT, None)


async def test_any_queued_says_whether_a_job_waits_in_the_queue(database: Database) -> None:
    store = _store(database)
    assert not await store.runs.any_queued()
    await _queued_job(store)
    assert await store.runs.any_queued()
    await store.runs.claim_next_queued(RUNNER, limit=10, now=T0)
    assert not await store.runs.any_queued()
