"""Durability: checkpoints after every iteration; restarts (graceful and kill -9) resume
running jobs from their last checkpoint and sleeping ones until their stored wake time;
nothing recorded as done is done twice; a crashed replica's jobs are taken over."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.support import RPC_TIMEOUT, eventually, free_port

from .conftest import START, stub_for
from .support import (
    Gate,
    agent_state,
    events_of,
    finished,
    get_job,
    ledger,
    status_of,
    submit,
    turn,
    types_of,
    varied_loop,
)


async def _value(value: object) -> object:
    return value


async def test_a_restarted_server_resumes_running_jobs_from_their_checkpoint(
    start_server, executor_settings, gate: Gate, project_id
) -> None:
    settings = executor_settings()
    first = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        job = await submit(stub_for(channel), project_id, varied_loop(), brain="gated")
        gate.allow(3)
        await eventually(lambda: ledger(first, job.job_id), lambda rows: len(rows) == 3)
        await eventually(lambda: _value(gate.waiting), lambda waiting: waiting == 1)
    await first.stop(grace_seconds=0.5)  # the 4th turn is in flight: not recorded, so redone

    second = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = stub_for(channel)
        await eventually(lambda: _value(gate.waiting), lambda waiting: waiting == 1)
        gate.allow(2)
        await eventually(lambda: ledger(second, job.job_id), lambda rows: len(rows) == 5)
        events = await events_of(stub, job.job_id)
        thinking = [e.agent_thinking for e in events if e.type == "agent.thinking"]
        # The scripted brain picks its turn from the restored conversation: no turn twice.
        assert [(t.iteration, t.text) for t in thinking] == [(n + 1, f"step {n}") for n in range(5)]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert types_of(events).count("job.status_changed") == 2  # queued, running: once each
        await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    assert [i for i, _ in await ledger(second, job.job_id)][:5] == [1, 2, 3, 4, 5]


async def test_a_restarted_server_keeps_sleeping_agents_asleep_until_their_wake_time(
    start_server, executor_settings, manual_clock, project_id
) -> None:
    settings = executor_settings()
    first = await start_server(settings)
    config = {"turns": [turn("one", [{"name": "echo", "input": {"text": "1"}}]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        job = await submit(stub_for(channel), project_id, config, budget=5000)
        await agent_state(stub_for(channel), job.job_id, job_pb2.AGENT_STATE_SLEEPING)
    await first.stop(grace_seconds=0.5)
    midnight = START.replace(hour=0) + timedelta(days=1)

    second = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = stub_for(channel)
        # Parked again at once: in the lot, no run.
        await eventually(lambda: _value(second.executor.lot), lambda lot: job.job_id in lot)
        assert job.job_id not in second.executor.runs
        status = await status_of(stub, job.job_id)
        assert status.agent_state == job_pb2.AGENT_STATE_SLEEPING
        assert status.wake_time.ToDatetime() == midnight.replace(tzinfo=None)
        assert len(await ledger(second, job.job_id)) == 1

        await manual_clock.set(midnight)
        done = await finished(stub, job.job_id)
        assert done.status == job_pb2.JOB_STATUS_READY
        assert types_of(await events_of(stub, job.job_id)).count("agent.waking") == 1
        assert len(await ledger(second, job.job_id)) == 2


async def test_a_restarted_server_rebuilds_its_parked_agents_live_keys_in_pages(
    start_server, executor_settings, project_id, monkeypatch
) -> None:
    """An embedded Redis engine restarts empty: the restarted runner writes every parked
    agent's keys back from SQL, a page of jobs per batch of reads and round trip."""
    from redis.asyncio import Redis

    from cofounder_server.live import keys
    from cofounder_server.services import changes

    monkeypatch.setattr(changes, "REPAIR_PAGE", 2, raising=False)
    settings = executor_settings()
    first = await start_server(settings)
    config = {"turns": [turn("one", [{"name": "echo", "input": {"text": "1"}}]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = stub_for(channel)
        jobs = [await submit(stub, project_id, config, budget=5000) for _ in range(5)]
        for job in jobs:
            await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
    await first.stop(grace_seconds=0.5)

    def names(job_id: str) -> list[str]:
        return [
            keys.state_key(job_id),
            keys.wake_at_key(job_id),
            keys.budget_pct_key(job_id),
            keys.summary_key(job_id),
            keys.last_sequence_key(job_id),
        ]

    redis = Redis.from_url(settings.redis_url)
    try:
        written = {job.job_id: await redis.mget(names(job.job_id)) for job in jobs}
        assert all(None not in values for values in written.values())
        await redis.delete(*(name for job in jobs for name in names(job.job_id)))
        await start_server(settings)
        for job in jobs:
            rebuilt = await eventually(
                lambda job_id=job.job_id: redis.mget(names(job_id)),
                lambda found: None not in found,
            )
            # State, wake time, budget share and last sequence as the running server wrote them.
            assert rebuilt[0] == b"sleeping"
            assert [rebuilt[1], rebuilt[2], rebuilt[4]] == [written[job.job_id][i] for i in (1, 2, 4)]
    finally:
        await redis.aclose()


async def _spawn(
    data_dir: Path, port: int, redis_url: str, database_url: str, *extra: str
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cofounder_server",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--redis-url",
        redis_url,
        "--database-url",
        database_url,
        "--max-tool-calls",
        "100000000",
        "--claim-interval-seconds",
        "0.2",
        "--log-level",
        "WARNING",
        *extra,
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _ledger_of(database_url: str, job_id: str) -> list[int]:
    from sqlalchemy import select

    from cofounder_server.store.database import open_database
    from cofounder_server.store.models import UsageLedgerRow

    database = await open_database(database_url)
    try:
        async with database.read() as session:
            rows = await session.scalars(
                select(UsageLedgerRow.iteration)
                .where(UsageLedgerRow.job_id == job_id)
                .order_by(UsageLedgerRow.iteration)
            )
            return [int(r) for r in rows]
    finally:
        await database.close()


async def test_kill_9_then_restart_resumes_and_a_dead_replicas_jobs_are_taken_over(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id
) -> None:
    database_url = fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    redis_url = shared_redis_url
    port = free_port()
    processes: list[asyncio.subprocess.Process] = []
    try:

        async def serve(data_dir: Path, *extra: str) -> job_pb2.Job | None:
            processes.append(await _spawn(data_dir, port, redis_url, database_url, *extra))
            return None

        async def ledger_len(job_id: str) -> int:
            return len(await _ledger_of(database_url, job_id))

        await serve(tmp_path / "a", "--lease-seconds", "1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stub_for(channel)
            await eventually(lambda: _ready(stub), bool, within=30)
            job = await submit(stub, project_id, varied_loop())
            await eventually(lambda: ledger_len(job.job_id), lambda n: n >= 20, within=30)
        processes[-1].send_signal(signal.SIGKILL)
        await processes[-1].wait()
        killed_at = await ledger_len(job.job_id)

        # Another replica (new data dir, new runner id) takes over once the dead one's lease expired.
        await serve(tmp_path / "b", "--lease-seconds", "30")
        await eventually(lambda: ledger_len(job.job_id), lambda n: n >= killed_at + 20, within=30)
        processes[-1].send_signal(signal.SIGKILL)
        await processes[-1].wait()
        killed_again = await ledger_len(job.job_id)

        # The same data dir is the same runner: it takes its jobs back at once, long before
        # its 30 s lease would expire.
        await serve(tmp_path / "b", "--lease-seconds", "30")
        await eventually(lambda: ledger_len(job.job_id), lambda n: n >= killed_again + 20, within=15)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stub_for(channel)
            cancelled = (
                await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
            ).job
            assert cancelled.status == job_pb2.JOB_STATUS_CANCELLED
            await asyncio.sleep(0.3)
            iterations = await _ledger_of(database_url, job.job_id)
            # Every model call recorded once, none skipped, across two kills and a takeover.
            assert iterations == list(range(1, len(iterations) + 1))
            events = await events_of(stub, job.job_id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_CANCELLED
            thinking = [e.agent_thinking.iteration for e in events if e.type == "agent.thinking"]
            assert thinking == list(range(1, len(thinking) + 1))
            assert (await get_job(stub, job.job_id)).status == job_pb2.JOB_STATUS_CANCELLED
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _ready(stub) -> bool:
    try:
        await stub.ListJobs(pb.ListJobsRequest(page_size=1), timeout=1)
        return True
    except grpc.aio.AioRpcError:
        return False
