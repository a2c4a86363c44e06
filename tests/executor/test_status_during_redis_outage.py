"""GetJobStatus while Redis is down: the durable record's view, marked as such, then live again."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2_grpc, job_pb2
from cofounder_server.live.engine import EmbeddedRedis
from tests.support import eventually

from .conftest import START, Starter
from .support import agent_state, narrate, status_of, submit, turn

MIDNIGHT = START.replace(hour=0, tzinfo=None) + timedelta(days=1)
CALL = 4500  # one scripted call: 1000 in + 100 out tokens at $3 / $15 per million


async def test_status_comes_from_sql_while_redis_is_down_and_says_so(
    start_server: Starter, tmp_path, project_id
) -> None:
    engine = EmbeddedRedis(tmp_path / "redis")
    server = await start_server(redis_url=await engine.start())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            # One call uses 90 % of the budget: the agent sleeps until midnight.
            script = {"turns": [turn("one", [narrate("working")]), turn("done")]}
            job = await submit(stub, project_id, script, budget=5000)
            live = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
            assert not live.live_state_unavailable

            await engine.stop()

            async def outage_status() -> job_pb2.JobStatusSnapshot | None:
                try:
                    return await status_of(stub, job.job_id)
                except grpc.aio.AioRpcError as error:
                    return error  # type: ignore[return-value]  # shown if it never answers

            during = await eventually(
                outage_status,
                lambda s: isinstance(s, job_pb2.JobStatusSnapshot) and s.live_state_unavailable,
            )
            assert during.job_status == job_pb2.JOB_STATUS_RUNNING
            assert during.agent_state == job_pb2.AGENT_STATE_SLEEPING
            assert during.wake_time.ToDatetime() == MIDNIGHT
            assert during.spent_today_microdollars == CALL
            assert during.daily_budget_microdollars == 5000
            assert during.budget_percent == 90
            assert during.latest_event_sequence == live.latest_event_sequence > 0

            await engine.start()
            after = await eventually(
                lambda: status_of(stub, job.job_id), lambda s: not s.live_state_unavailable
            )
            assert after.agent_state == job_pb2.AGENT_STATE_SLEEPING
            assert after.wake_time.ToDatetime() == MIDNIGHT
            assert after.spent_today_microdollars == CALL
            assert after.latest_event_sequence == live.latest_event_sequence
    finally:
        await server.stop(grace_seconds=1.0)
        await engine.stop()


async def test_an_unknown_job_is_not_found_while_redis_is_down(start_server: Starter, tmp_path) -> None:
    engine = EmbeddedRedis(tmp_path / "redis")
    server = await start_server(redis_url=await engine.start())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            await engine.stop()

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await status_of(stub, str(uuid.uuid4()))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(grace_seconds=1.0)
        await engine.stop()
