"""Two server processes on one port (``--reuse-port``): the kernel spreads connections over
both, each process holds one Redis subscription per watched job, and every watcher sees the
job's events in order whichever process serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from redis.asyncio import Redis

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.live import keys
from tests.integration.server_process import health_of, run_to_exit, spawn, stop
from tests.support import RPC_TIMEOUT, eventually, free_port, scripted_agent

WATCHERS = 24
"""Connections opened; all landing on one process by chance has odds of 2 in 2**24."""


def shared_argv(data_dir: Path, port: int, redis_url: str, database_url: str) -> list[str]:
    return [
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--redis-url",
        redis_url,
        "--database-url",
        database_url,
        "--reuse-port",
        "--executor-enabled",
        "false",
        "--rate-limit-per-second",
        "0",
        "--service-rate-limit-per-second",
        "0",
        "--max-streams-per-principal",
        "0",
        "--max-streams-per-service",
        "0",
    ]


@pytest.fixture
async def two_servers(tmp_path: Path, app: Application, database_url: str) -> AsyncIterator[tuple[int, str]]:
    """Two processes serving one port on the session server's Redis and a shared database."""
    shared_database = database_url or f"sqlite:///{tmp_path / 'shared.db'}"
    port = free_port()
    processes = []
    try:
        for name in ("a", "b"):
            argv = shared_argv(tmp_path / name, port, app.redis_url, shared_database)
            log = tmp_path / f"{name}.log"
            processes.append(await spawn(argv, log))
            # One at a time: the second must find the port taken by a reuse-port socket
            # (and the schema migrated) and still start. Health answers from either process,
            # so each one's own start-up line says it serves.
            await eventually(
                lambda log=log: asyncio.to_thread(log.read_text),
                lambda text: "listening on" in text,
                within=30,
            )
        await eventually(lambda: health_of(port), lambda s: s == health_pb2.HealthCheckResponse.SERVING)
        yield port, app.redis_url
    finally:
        for process in processes:
            await stop(process)


async def test_two_processes_share_a_port_and_every_watcher_gets_every_event(
    two_servers: tuple[int, str], project_id: str
) -> None:
    port, redis_url = two_servers
    target = f"127.0.0.1:{port}"
    # A channel per watcher: separate TCP connections, which the kernel spreads over both.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(WATCHERS)
    ]
    redis = Redis.from_url(redis_url)
    try:
        stubs = [agent_control_service_pb2_grpc.AgentControlServiceStub(c) for c in channels]
        submitted = await stubs[0].SubmitJob(
            pb.SubmitJobRequest(
                project_id=project_id, goal="g", daily_budget_microdollars=1_000_000, agent=scripted_agent()
            ),
            timeout=RPC_TIMEOUT,
        )
        job_id = submitted.job.job_id
        calls = [stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id)) for stub in stubs]
        for call in calls:
            first = await asyncio.wait_for(call.read(), RPC_TIMEOUT)
            assert first.HasField("snapshot")
        channel = keys.job_events_channel(job_id)

        async def subscribers() -> int:
            counts = await redis.pubsub_numsub(channel)
            return int(counts[0][1])

        # One subscription per process that has watchers: both processes serve some.
        await eventually(subscribers, lambda n: n == 2)

        await stubs[1].CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)

        async def drain(call: grpc.aio.UnaryStreamCall) -> list[tuple[int, str]]:
            seen = []
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.HasField("events"):
                    seen += [(event.sequence, event.type) for event in response.events.events]
            assert await call.code() == grpc.StatusCode.OK
            return seen

        results = await asyncio.wait_for(asyncio.gather(*(drain(call) for call in calls)), 3 * RPC_TIMEOUT)
        expected = [(2, "job.status_changed")]
        assert results == [expected] * WATCHERS
        job = await stubs[0].GetJob(pb.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)
        assert job.job.status == job_pb2.JOB_STATUS_CANCELLED
    finally:
        await redis.aclose()
        for c in channels:
            await c.close()


async def test_reuse_port_needs_shared_storage(tmp_path: Path) -> None:
    code, stderr = await run_to_exit(
        ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"), "--reuse-port"]
    )
    assert code != 0
    assert stderr.count("\n") == 1, stderr
    assert "--reuse-port needs --redis-url and --database-url" in stderr
