"""Graceful drain: health NOT_SERVING at once, serving on through the pause, then every open
stream ended with a status clients resume from; and connections that age out end their
streams the same way, which the Python client rides through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_client import Client
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from tests.events.conftest import start_replica
from tests.events.support import error_info, publish, publish_many, thinking, watch
from tests.integration.server_process import run_to_exit
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT, eventually, free_port

PAUSE = timedelta(seconds=30)


async def test_drain_reports_not_serving_then_serves_through_the_pause_then_ends_streams_resumably(
    app: Application, jobs_stub, project_id: str, settings_for: Callable[..., Settings]
) -> None:
    clock = ManualClock(datetime.now(UTC))
    draining = await start_replica(app, settings_for, clock)
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{draining.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            followed = await submit(jobs_stub, project_id)
            finishing = await submit(jobs_stub, project_id)
            stream = watch(stub, followed.job_id, after=0)
            ending = watch(stub, finishing.job_id, after=0)
            for opened in (stream, ending):
                await opened.snapshot()
                await opened.until(1)

            stop = asyncio.create_task(draining.stop(grace_seconds=5.0, pause_seconds=PAUSE.total_seconds()))

            async def status() -> int:
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
                return int(response.status)

            await eventually(status, lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING)
            # The pause: calls and streams are still served while load balancers notice.
            await stub.CancelJob(pb.CancelJobRequest(job_id=finishing.job_id), timeout=RPC_TIMEOUT)
            assert await ending.end() is None
            assert await publish(app, followed.job_id, thinking(2)) == 2
            assert [e.sequence for e in await stream.until(2)] == [1, 2]
            assert not stop.done()

            await clock.advance(PAUSE)
            error = await stream.end()
            await asyncio.wait_for(stop, RPC_TIMEOUT)
            stopped = True
    finally:
        if not stopped:
            await draining.stop(grace_seconds=1.0)

    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "SERVER_SHUTTING_DOWN"
    assert info.metadata["last_sequence"] == "2"


async def test_a_connection_that_ages_out_ends_its_stream_unavailable_and_the_client_resumes(
    app: Application, jobs_stub, project_id: str, settings_for: Callable[..., Settings]
) -> None:
    clock = ManualClock(datetime.now(UTC))
    replica = await start_replica(
        app, settings_for, clock, max_connection_age_seconds=0.5, max_connection_age_grace_seconds=0.5
    )
    try:
        job = await submit(jobs_stub, project_id)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            raw = watch(agent_control_service_pb2_grpc.AgentControlServiceStub(channel), job.job_id, after=0)
            await raw.snapshot()
            await raw.until(1)
            error = await raw.end(within=30)
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        async with Client(f"127.0.0.1:{replica.port}") as client:
            seen: list[int] = []

            async def follow() -> None:
                events = client.follow_job_events(job.job_id, after_sequence=0, max_reconnects=1000)
                async for event in events:
                    seen.append(event.sequence)

            follower = asyncio.create_task(follow())
            # Events keep coming across several connection lifetimes (each 0.5 s + 0.5 s).
            for batch in range(6):
                await publish_many(app, job.job_id, [thinking(batch * 10 + i) for i in range(10)])
                expected = 1 + 10 * (batch + 1)
                await eventually(lambda: asyncio.sleep(0, len(seen)), lambda n, e=expected: n == e)
                await asyncio.sleep(0.3)
            await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
            await asyncio.wait_for(follower, 30)
        assert seen == list(range(1, 63))
    finally:
        await replica.stop(grace_seconds=1.0)


async def test_negative_drain_durations_are_refused_in_one_line(tmp_path) -> None:
    for flag in ("--drain-pause-seconds", "--max-connection-age-seconds", "--shutdown-grace-seconds"):
        code, stderr = await run_to_exit(
            ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"), flag, "-1"]
        )
        assert code == 1
        assert stderr.strip() == f"invalid {flag} -1: must be 0 or more", stderr
