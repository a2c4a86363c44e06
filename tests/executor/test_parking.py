"""Parked agents in a real server: no task per parked agent, woken by a notification from any
replica, lost notifications caught by the sweep, and the midnight storm under the awake cap."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import event_pb2, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock, next_utc_midnight
from cofounder_server.domain.budget import window_start
from cofounder_server.domain.model import AgentSpec, AgentState, JobStatus, NewJob
from cofounder_server.live import keys
from cofounder_server.store.jobs import _new_row
from cofounder_server.store.models import JobRow
from tests.support import RPC_TIMEOUT, eventually

from .conftest import START, Starter, stub_for
from .support import agent_state, events_of, finished, narrate, submit, turn

MIDNIGHT = next_utc_midnight(START)
PRICES = '{"default": {"input": 1000000, "output": 1000000}}'
BUDGET = 1000


def sleeper() -> dict[str, object]:
    """First call: 90 % of the 1,000-microdollar budget (it sleeps); after the wake: done."""
    return {"turns": [turn("most of today", [narrate("one")], tokens=(900, 0)), turn("done", tokens=(10, 0))]}


async def count(app: Application, *condition: object) -> int:
    async with app.database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(JobRow).where(*condition)) or 0)


def agent_tasks() -> int:
    return sum(1 for task in asyncio.all_tasks() if task.get_name().startswith(("agent-", "resume-")))


async def park(app: Application, project_id: str, n: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = stub_for(channel)
        jobs = [await submit(stub, project_id, sleeper(), budget=BUDGET) for _ in range(n)]
    await eventually(
        lambda: count(app, JobRow.agent_state == AgentState.SLEEPING.value), lambda c: c == n, within=60
    )
    return [job.job_id for job in jobs]


async def test_parked_agents_hold_no_task_and_resume_at_midnight_under_the_cap(
    start_server: Starter, manual_clock: ManualClock, project_id: str
) -> None:
    app = await start_server(price_table=PRICES, max_running_jobs=3)
    executor = app.executor
    assert executor is not None
    await park(app, project_id, 30)
    await eventually(lambda: asyncio.sleep(0, len(executor.lot)), lambda n: n == 30)
    assert executor.runs == {}
    assert agent_tasks() == 0

    await manual_clock.set(MIDNIGHT)
    await eventually(lambda: count(app, JobRow.status == JobStatus.READY.value), lambda c: c == 30, within=60)
    assert executor.slots.peak <= 3
    assert len(executor.lot) == 0


def asker() -> dict[str, object]:
    """First call: a question without a deadline (it waits for input); after the answer: done."""
    question = {
        "question": "Which database?",
        "options": [{"value": "pg", "label": "PostgreSQL"}, {"value": "sqlite", "label": "SQLite"}],
        "recommended": "pg",
    }
    return {
        "turns": [turn("asking", [{"name": "ask_human", "input": question}], tokens=(10, 0)), turn("done")]
    }


async def test_agents_waiting_for_input_park_like_sleeping_ones(
    start_server: Starter, project_id: str
) -> None:
    app = await start_server(price_table=PRICES)
    executor = app.executor
    assert executor is not None
    await park(app, project_id, 5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = stub_for(channel)
        for _ in range(5):
            await submit(stub, project_id, asker(), budget=BUDGET)
    await eventually(
        lambda: count(app, JobRow.agent_state == AgentState.WAITING_FOR_INPUT.value), lambda c: c == 5
    )
    # Both kinds in the one parking lot: no run and no task of their own.
    await eventually(lambda: asyncio.sleep(0, len(executor.lot)), lambda n: n == 10)
    assert executor.runs == {}
    assert agent_tasks() == 0


async def test_wake_agent_on_an_api_replica_resumes_the_agent_by_notification(
    start_server: Starter, executor_settings, project_id: str, tmp_path: Path
) -> None:
    # No sweep within the test: only the notification can wake the agent.
    runner = await start_server(price_table=PRICES, sweep_interval_seconds=3600.0)
    api = await start_server(
        executor_settings(
            executor_enabled=False,
            price_table=PRICES,
            data_dir=tmp_path / "api",
            database_url=runner.database_url,
        )
    )
    (job_id,) = await park(runner, project_id, 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        stub = stub_for(channel)
        await stub.WakeAgent(
            pb.WakeAgentRequest(job_id=job_id, top_up_microdollars=1000), timeout=RPC_TIMEOUT
        )
        done = await finished(stub, job_id, within=10)
    assert done.status == job_pb2.JOB_STATUS_READY


async def test_the_sweep_catches_a_wake_whose_notification_was_lost(
    start_server: Starter, manual_clock: ManualClock, project_id: str
) -> None:
    from cofounder_server.store.events import EventLogRepository
    from cofounder_server.store.runs import RunRepository

    app = await start_server(price_table=PRICES, sweep_interval_seconds=0.2)
    (job_id,) = await park(app, project_id, 1)
    # Another replica's WakeAgent, committed in SQL, whose notification never arrived.
    runs = RunRepository(app.database, EventLogRepository(app.database, retention_events=1000))
    await runs.wake(
        job_id,
        owner_scope=None,
        request_id="",
        top_up=1000,
        window=window_start(manual_clock.now()),
        now=manual_clock.now(),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        done = await finished(stub_for(channel), job_id, within=15)
    assert done.status == job_pb2.JOB_STATUS_READY


async def test_a_sweep_acts_on_a_row_it_examined_before_once_that_row_changed(
    start_server: Starter, manual_clock: ManualClock, project_id: str
) -> None:
    from cofounder_server.store.events import EventLogRepository
    from cofounder_server.store.runs import RunRepository

    # Only the sweeps the test runs: the first examines the parked job's row, which the second
    # skips unless it changed (its version), and a lost wake changes it.
    app = await start_server(price_table=PRICES, sweep_interval_seconds=3600.0)
    executor = app.executor
    assert executor is not None
    (job_id,) = await park(app, project_id, 1)
    await eventually(lambda: asyncio.sleep(0, job_id in executor.lot), lambda held: held)
    await executor.sweep()
    await executor.sweep()
    assert job_id in executor.lot
    runs = RunRepository(app.database, EventLogRepository(app.database, retention_events=1000))
    await runs.wake(
        job_id,
        owner_scope=None,
        request_id="",
        top_up=1000,
        window=window_start(manual_clock.now()),
        now=manual_clock.now(),
    )
    await executor.sweep()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        done = await finished(stub_for(channel), job_id, within=15)
    assert done.status == job_pb2.JOB_STATUS_READY


async def test_a_wake_signal_key_wakes_a_parked_agent(
    start_server: Starter, manual_clock: ManualClock, project_id: str
) -> None:
    app = await start_server(price_table=PRICES, sweep_interval_seconds=0.2)
    (job_id,) = await park(app, project_id, 1)
    redis = Redis.from_url(app.redis_url)
    try:
        await redis.set(keys.wake_signal_key(job_id), "1", ex=keys.WAKE_SIGNAL_TTL_SECONDS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = stub_for(channel)
            # Woken without a top-up, it finds today's budget spent and sleeps again.
            await eventually(
                lambda: events_of(stub, job_id),
                lambda events: [e.type for e in events].count("agent.sleeping") == 2,
                within=15,
            )
            events = await events_of(stub, job_id)
            assert [e.agent_waking.reason for e in events if e.type == "agent.waking"] == [
                event_pb2.WAKE_REASON_REQUESTED
            ]
            await agent_state(stub, job_id, job_pb2.AGENT_STATE_SLEEPING)
        assert await redis.exists(keys.wake_signal_key(job_id)) == 0
    finally:
        await redis.aclose()


STORM = 5000
CAP = 50


@pytest.mark.timeout(900)
async def test_the_midnight_storm_resumes_every_agent_never_above_the_cap(
    start_server: Starter, manual_clock: ManualClock, project_id: str
) -> None:
    app = await start_server(price_table=PRICES, max_running_jobs=CAP)
    executor = app.executor
    assert executor is not None
    # 5,000 agents asleep until midnight, as the budget left them (written straight to SQL:
    # parking them through the API would take minutes).
    spec = AgentSpec(brain="scripted", model="m", config={"turns": [turn("done", tokens=(10, 0))]})
    rows = []
    for n in range(STORM):
        row = _new_row(
            NewJob(
                owner_id="local",
                project_id=project_id,
                goal=f"storm {n}",
                daily_budget_microdollars=BUDGET,
                agent=spec,
                labels={},
            ),
            START + timedelta(microseconds=n),
        )
        row.status = JobStatus.RUNNING.value
        row.agent_state = AgentState.SLEEPING.value
        row.wake_at = MIDNIGHT
        rows.append(row)
    async with app.database.write() as session:
        session.add_all(rows)
    await eventually(lambda: asyncio.sleep(0, len(executor.lot)), lambda n: n == STORM, within=60)
    assert agent_tasks() == 0

    await manual_clock.set(MIDNIGHT)
    await eventually(
        lambda: count(app, JobRow.status == JobStatus.READY.value, JobRow.project_id == project_id),
        lambda c: c == STORM,
        within=480,
    )
    assert 0 < executor.slots.peak <= CAP
