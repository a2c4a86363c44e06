"""Redis that fails over: the server on a ``redis+sentinel://`` URL (a primary, a replica and
three sentinels on loopback) while agents run, watchers follow and jobs are submitted. The
primary is killed: health turns NOT_SERVING and back to SERVING once the sentinels promote
the replica, the server works on the new primary, and no job, event or decision is lost;
the live keys of what changed meanwhile are rebuilt on the new primary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client import Client
from cofounder_server.app import Application
from cofounder_server.config import Settings
from cofounder_server.live import keys
from cofounder_server.live.engine import EmbeddedRedisError
from tests.sentinel_cluster import SentinelCluster
from tests.support import eventually

from .conftest import stub_for
from .support import TERMINAL, events_of, turn
from .test_rolling_drain import paced_loop

LOOPING = 4
WATCHERS_PER_JOB = 5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def asker() -> dict[str, Any]:
    """Asks a person first, then finishes with the answer."""
    question = {
        "question": "Which database?",
        "options": [{"value": "pg", "label": "PostgreSQL"}, {"value": "sqlite", "label": "SQLite"}],
    }
    return {
        "turns": [turn("asking", [{"name": "ask_human", "input": question}], tokens=(1, 0)), turn("done")]
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    try:
        sentinels = SentinelCluster(tmp_path / "redis")
    except EmbeddedRedisError as error:
        pytest.skip(f"no Redis server binary to run a primary, a replica and sentinels: {error}")
    try:
        await sentinels.start()
        yield sentinels
    finally:
        await sentinels.stop()


async def record_health(port: int, statuses: list[int]) -> None:
    """Append the server's overall health to ``statuses`` each time it changes."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if not statuses or statuses[-1] != response.status:
                statuses.append(response.status)
            await asyncio.sleep(0.02)


async def check_nothing_lost(
    port: int,
    client: Client,
    *,
    looping: list[job_pb2.Job],
    seen: list[list[int]],
    waiting: job_pb2.Job,
    submitted: list[str],
) -> None:
    """Each watcher saw its job's whole log once, in order; the answered job and every
    submitted one ran to their end."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stub_for(channel)
        for index, sequences in enumerate(seen):
            events = await events_of(stub, looping[index % LOOPING].job_id)
            assert sequences == [e.sequence for e in events] == list(range(1, len(events) + 1))
        answered = await eventually(
            lambda: client.get_job(waiting.job_id), lambda j: j.status in TERMINAL, within=60
        )
        assert answered.status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, waiting.job_id)
        assert len([e for e in events if e.type == "agent.escalation_resolved"]) == 1
    for job_id in submitted:
        job = await eventually(lambda j=job_id: client.get_job(j), lambda j: j.status in TERMINAL, within=60)
        assert job.status == job_pb2.JOB_STATUS_READY


@pytest.mark.timeout(600)
async def test_a_primary_killed_under_load_fails_over_and_nothing_is_lost(
    cluster: SentinelCluster, settings_for: Callable[..., Settings], fresh_database_url: str, project_id: str
) -> None:
    settings = replace(
        settings_for(fresh_database_url, redis_url=cluster.url),
        executor_enabled=True,
        brain_retry_delay_seconds=0.3,
        rate_limit_per_second=0,
        service_rate_limit_per_second=0,
        max_streams_per_principal=0,
    )
    app = await Application.start(settings)
    old_primary = await cluster.primary_port()
    try:
        async with Client(f"127.0.0.1:{app.port}", retries=4) as client:
            budget = 10**12

            async def submit(config: dict[str, Any]) -> job_pb2.Job:
                agent = {"brain": "scripted", "config": config}
                return await client.submit_job(
                    project_id=project_id, goal="g", daily_budget_microdollars=budget, agent=agent
                )

            looping = [await submit(paced_loop()) for _ in range(LOOPING)]
            waiting = await submit(asker())
            pending = await eventually(
                lambda: client.list_escalations(job_id=waiting.job_id),
                lambda r: [e.status for e in r.escalations] == [escalation_pb2.ESCALATION_STATUS_PENDING],
                within=60,
            )
            escalation = pending.escalations[0]

            seen: list[list[int]] = [[] for _ in range(LOOPING * WATCHERS_PER_JOB)]

            async def follow(index: int) -> None:
                job_id = looping[index % LOOPING].job_id
                async for event in client.follow_job_events(job_id, after_sequence=0, max_backoff=1.0):
                    seen[index].append(event.sequence)

            watchers = [asyncio.create_task(follow(i)) for i in range(len(seen))]
            submitted: list[str] = []
            submitting = asyncio.Event()
            submitting.set()

            async def submit_stream() -> None:
                while submitting.is_set():
                    submitted.append((await submit({"turns": [turn("done")]})).job_id)
                    await asyncio.sleep(0.05)

            submitter = asyncio.create_task(submit_stream())
            statuses: list[int] = []
            recorder = asyncio.create_task(record_health(app.port, statuses))
            await eventually(lambda: asyncio.sleep(0, min(len(s) for s in seen)), lambda n: n > 5, within=60)

            cluster.kill("primary")
            # Decided while Redis is away: committed in SQL, the agent gets it all the same.
            await client.resolve_escalation(escalation.escalation_id, decision="pg")
            await eventually(lambda: asyncio.sleep(0, statuses), lambda s: NOT_SERVING in s, within=60)
            await eventually(lambda: asyncio.sleep(0, statuses), lambda s: s[-1] == SERVING, within=120)
            assert statuses[0] == SERVING
            new_primary = await cluster.primary_port()
            assert new_primary == cluster.ports["replica"] != old_primary

            # Work goes on against the new primary.
            before = sum(len(s) for s in seen)
            await eventually(
                lambda: asyncio.sleep(0, sum(len(s) for s in seen)), lambda n: n > before + 50, within=60
            )
            submitting.clear()
            await asyncio.wait_for(submitter, 60)
            recorder.cancel()
            for job in looping:
                await client.cancel_job(job.job_id)
            await asyncio.wait_for(asyncio.gather(*watchers), 120)

            await check_nothing_lost(
                app.port, client, looping=looping, seen=seen, waiting=waiting, submitted=submitted
            )
            finished = [waiting.job_id, *submitted]

        # The live keys of every finished job are on the new primary, those written while
        # it was being promoted included.
        async with Redis(port=new_primary, decode_responses=True) as redis:

            async def states() -> list[str | None]:
                return list(await redis.mget([keys.state_key(job_id) for job_id in finished]))

            await eventually(states, lambda values: set(values) == {"completed"}, within=60)
    finally:
        await app.stop(grace_seconds=1.0)
