"""A rolling restart of three replicas, each drained by SIGTERM, under many watchers and a
stream of submits, as clients see it: the Python client on one channel over all three
addresses (round robin). No watcher misses or repeats an event, and no call fails: every
failure on the way was one the client's retry policy retries (unary calls) or resumes
from (streams).

``COFOUNDER_TEST_DRAIN_WATCHERS`` sets the number of watchers (default 200; the full-size
run uses 1000)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import job_pb2
from cofounder_client import Client
from tests.support import eventually

from .conftest import stub_for
from .support import TERMINAL, events_of, narrate, turn
from .test_failover import Replicas

WATCHERS = int(os.environ.get("COFOUNDER_TEST_DRAIN_WATCHERS", "200"))
JOBS = 10
CLIENTS = 8
REPLICAS = ("r1", "r2", "r3")
FLAGS = (
    "--drain-pause-seconds", "1",
    "--shutdown-grace-seconds", "10",
    "--brain-retry-delay-seconds", "0.5",
    "--service-rate-limit-per-second", "0",
    "--max-streams-per-principal", "0",
    "--max-streams-per-service", "0",
)  # fmt: skip


def paced_loop(count: int = 12) -> dict[str, Any]:
    """An agent that never ends: each turn first fails once with a retryable error, so the
    executor waits the retry delay between turns (a steady trickle of events per job); its
    calls never repeat within ten."""
    slow = {"error": {"message": "slow down", "retryable": True, "signature": "scripted:slow"}, "times": 1}
    turns = [[slow, turn(f"step {n}", [narrate(f"working on {n}")], tokens=(1, 0))] for n in range(count)]
    return {"turns": [entry for pair in turns for entry in pair], "loop": True}


async def check_complete(
    replicas: Replicas,
    client: Client,
    looping: list[job_pb2.Job],
    seen: list[list[int]],
    submitted: list[str],
) -> None:
    """Each watcher saw its job's whole log once, in order; each submitted job ran to its end."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replicas.ports['r1']}") as channel:
        stub = stub_for(channel)
        complete: dict[str, list[int]] = {}
        for job in looping:
            events = await events_of(stub, job.job_id)
            endings = [e.job_status_changed.status for e in events if e.type == "job.status_changed"]
            assert [s for s in endings if s in TERMINAL] == [job_pb2.JOB_STATUS_CANCELLED]
            complete[job.job_id] = [e.sequence for e in events]
            assert complete[job.job_id] == list(range(1, len(events) + 1))
        for index, sequences in enumerate(seen):
            # Every event once, in order, up to the terminal one, across every reconnect.
            assert sequences == complete[looping[index % JOBS].job_id], index
    for job_id in submitted:
        job = await eventually(lambda j=job_id: client.get_job(j), lambda j: j.status in TERMINAL, within=120)
        assert job.status == job_pb2.JOB_STATUS_READY


@pytest.mark.timeout(900)
async def test_a_rolling_drain_loses_no_event_and_fails_no_call(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id: str
) -> None:
    replicas = Replicas(
        tmp_path, fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", shared_redis_url
    )
    clients: list[Client] = []
    try:
        for name in REPLICAS:
            await replicas.start(name, *FLAGS)
        target = "ipv4:" + ",".join(f"127.0.0.1:{replicas.ports[name]}" for name in REPLICAS)
        clients = [
            Client(target, retries=4, channel_options=[("grpc.lb_policy_name", "round_robin")])
            for _ in range(CLIENTS)
        ]
        budget = 10**12
        looping = [
            await clients[0].submit_job(
                project_id=project_id,
                goal="tick",
                daily_budget_microdollars=budget,
                agent={"brain": "scripted", "config": paced_loop()},
            )
            for _ in range(JOBS)
        ]
        seen: list[list[int]] = [[] for _ in range(WATCHERS)]

        async def follow(index: int) -> None:
            client = clients[index % CLIENTS]
            job_id = looping[index % JOBS].job_id
            async for event in client.follow_job_events(
                job_id, after_sequence=0, max_reconnects=50, max_backoff=1.0
            ):
                seen[index].append(event.sequence)

        watchers = [asyncio.create_task(follow(i)) for i in range(WATCHERS)]
        submitted: list[str] = []
        failures: list[BaseException] = []
        submitting = asyncio.Event()
        submitting.set()

        async def submit_stream() -> None:
            n = 0
            while submitting.is_set():
                try:
                    job = await clients[n % CLIENTS].submit_job(
                        project_id=project_id,
                        goal="short",
                        daily_budget_microdollars=budget,
                        agent={"brain": "scripted", "config": {"turns": [turn("done")]}},
                    )
                    submitted.append(job.job_id)
                except Exception as error:  # any failure is one the retry policy gave up on
                    failures.append(error)
                n += 1
                await asyncio.sleep(0.05)

        submitter = asyncio.create_task(submit_stream())

        def delivered() -> int:
            return sum(len(s) for s in seen)

        async def progressed(beyond: int) -> None:
            # Every watcher is live and the agents keep producing: under load, not idle.
            await eventually(
                lambda: asyncio.sleep(0, (delivered(), min(len(s) for s in seen))),
                lambda d: d[0] > beyond and d[1] > 0,
                within=120,
            )

        for name in REPLICAS:
            await progressed(delivered() + 5 * WATCHERS)
            process = replicas.processes[name]
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0
            assert "draining: health NOT_SERVING" in (tmp_path / f"{name}.log").read_text()
            await replicas.start(name, *FLAGS)
        await progressed(delivered() + 5 * WATCHERS)
        submitting.clear()
        await asyncio.wait_for(submitter, 60)

        for job in looping:
            await clients[0].cancel_job(job.job_id, reason="enough")
        await asyncio.wait_for(asyncio.gather(*watchers), 300)

        assert failures == []
        assert len(submitted) > 0
        await check_complete(replicas, clients[0], looping, seen, submitted)
    finally:
        for client in clients:
            await client.close()
        await replicas.stop_all()
