"""A rolling restart of three replicas under load: each one in turn stops gracefully and
comes back while agents keep running; at the end every job is done exactly once (each model
call recorded once, one ending) and every watcher, reconnecting with its cursor whenever its
replica went away, saw each job's events once, in order, without a gap."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.support import EXTERNAL_DATABASE, EXTERNAL_REDIS, eventually

from .conftest import stub_for
from .support import TERMINAL, events_of, get_job, narrate, submit, turn
from .test_durability import _ledger_of
from .test_failover import Replicas

JOBS = 24
TURNS = 150

pytestmark = pytest.mark.skipif(
    not (EXTERNAL_DATABASE and EXTERNAL_REDIS),
    reason="needs the machine's PostgreSQL and Redis (COFOUNDER_TEST_DATABASE_URL, COFOUNDER_TEST_REDIS_URL)",
)


def script() -> dict[str, object]:
    turns = [turn(f"step {n}", [narrate(f"part {n}")], tokens=(10, 1)) for n in range(TURNS)]
    return {"turns": [*turns, turn("done", tokens=(10, 1))]}


async def watch(replicas: Replicas, job_id: str) -> list[int]:
    """Every event sequence of the job as a client sees it, reconnecting to any replica with
    its cursor until the stream ends after the terminal event."""
    seen: list[int] = []
    cursor = 0
    while True:
        port = random.choice(list(replicas.ports.values()))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = stub_for(channel).WatchJobEvents(
                    pb.WatchJobEventsRequest(job_id=job_id, after_sequence=cursor)
                )
                async for response in call:
                    if response.HasField("events"):
                        for event in response.events.events:
                            seen.append(event.sequence)
                            cursor = event.sequence
                if await call.code() == grpc.StatusCode.OK:
                    return seen
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)


async def test_a_rolling_restart_under_load_does_every_job_once_and_watchers_miss_nothing(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id: str
) -> None:
    replicas = Replicas(tmp_path, fresh_database_url, shared_redis_url)
    names = ["r1", "r2", "r3"]
    try:
        for name in names:
            await replicas.start(name, "--max-running-jobs", "10")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.ports['r1']}") as channel:
            stub = stub_for(channel)
            jobs = [await submit(stub, project_id, script()) for _ in range(JOBS)]
        job_ids = [job.job_id for job in jobs]
        watchers = [asyncio.create_task(watch(replicas, job_id)) for job_id in job_ids]

        for name in names:
            await asyncio.sleep(1.0)
            process = replicas.processes[name]
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0
            await replicas.start(name, "--max-running-jobs", "10")

        seen = await asyncio.wait_for(asyncio.gather(*watchers), 180)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.ports['r2']}") as channel:
            stub = stub_for(channel)
            for job_id, sequences in zip(job_ids, seen, strict=True):
                job = await eventually(lambda j=job_id: get_job(stub, j), lambda j: j.status in TERMINAL)
                assert job.status == job_pb2.JOB_STATUS_READY
                # Each model call recorded once, none skipped.
                assert await _ledger_of(replicas.database_url, job_id) == list(range(1, TURNS + 2))
                events = await events_of(stub, job_id)
                thinking = [e.agent_thinking.iteration for e in events if e.type == "agent.thinking"]
                assert thinking == list(range(1, TURNS + 2))
                endings = [
                    e
                    for e in events
                    if e.type == "job.status_changed" and e.job_status_changed.status in TERMINAL
                ]
                assert len(endings) == 1
                # The watcher saw every event once, in order, across its reconnections.
                assert sequences == [e.sequence for e in events] == list(range(1, len(events) + 1))
    finally:
        await replicas.stop_all()
