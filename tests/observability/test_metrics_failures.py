"""The metrics of what goes wrong: lagging watchers, lease takeovers and losses, storage errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import exc, update

from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server import observability
from cofounder_server.domain.errors import Unavailable
from cofounder_server.live.connect import unavailable_on_error
from cofounder_server.observability.prometheus import PrometheusInstruments
from cofounder_server.store.database import open_database, unavailable_on_connection_error
from cofounder_server.store.models import JobRow, RunnerRow
from cofounder_server.store.runners import RunnerLeases
from tests.events.support import error_info, publish, thinking, watch
from tests.executor.conftest import START
from tests.executor.support import submit, turn
from tests.support import RPC_TIMEOUT, eventually

from .support import scrape, value


async def test_a_watcher_ended_for_lagging_is_counted(start_server, project_id) -> None:
    app = await start_server(metrics_listen="127.0.0.1:0", watch_buffer_events=16, executor_enabled=False)
    options = [("grpc.http2.lookahead_bytes", 65_536), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
        job = await submit(stub, project_id, {"turns": [turn("done")]})
        slow = watch(stub, job.job_id, reading=False)
        assert (await asyncio.wait_for(slow.call.read(), RPC_TIMEOUT)).HasField("snapshot")
        big = "x" * 60_000
        for i in range(64):
            await publish(app, job.job_id, thinking(i, big))
        slow.start_reading()
        error = await slow.end()
    assert error is not None
    assert error_info(error).reason == "WATCHER_TOO_SLOW"
    samples = await scrape(app.metrics_port)
    assert value(samples, "cofounder_watchers_too_slow_total") == 1


async def test_lease_takeovers_and_lost_leases_are_counted(start_server, project_id, gate) -> None:
    api = await start_server(executor_enabled=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
        job = await submit(stub, project_id, {"turns": [turn("one"), turn("two")]}, brain="gated")
    database = await open_database(api.database_url)
    try:
        # A replica that crashed while running the job: its lease has expired.
        leases = RunnerLeases(database)
        await leases.renew(
            "runner-crashed", now=START - timedelta(minutes=10), lease_until=START - timedelta(minutes=5)
        )
        async with database.write() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.job_id == job.job_id)
                .values(status="running", agent_state="working", runner_id="runner-crashed")
            )
        runner = await start_server(
            metrics_listen="127.0.0.1:0",
            data_dir=api.settings.data_dir / "runner",
            database_url=api.database_url,
        )
        port = runner.metrics_port
        # The takeover is counted in the claim's transaction, the claim once it returns: a
        # scrape may fall between the two.
        samples = await eventually(
            lambda: scrape(port),
            lambda s: (
                value(s, "cofounder_lease_takeovers_total") == 1
                and value(s, "cofounder_lease_claims_total", kind="running") == 1
            ),
        )
        assert value(samples, "cofounder_lease_claims_total", kind="queued") == 0
        assert value(samples, "cofounder_leases_lost_total") == 0

        # The runner stalled past its lease and another replica took the job over meanwhile:
        # the renewal finds the lease lapsed, and the job gone, and stops the run.
        await leases.renew("runner-other", now=START, lease_until=START + timedelta(hours=1))
        assert runner.executor is not None
        async with database.write() as session:
            await session.execute(
                update(RunnerRow)
                .where(RunnerRow.runner_id == runner.executor.runner_id)
                .values(lease_expires_at=START - timedelta(hours=1))
            )
            await session.execute(
                update(JobRow).where(JobRow.job_id == job.job_id).values(runner_id="runner-other")
            )
        await eventually(lambda: scrape(port), lambda s: value(s, "cofounder_leases_lost_total") == 1)
    finally:
        gate.allow(2)
        await database.close()


@pytest.fixture
def instruments():
    """Prometheus instruments installed for the test (and uninstalled after it)."""
    registry = CollectorRegistry()
    observability.install(PrometheusInstruments(registry))
    yield registry
    observability.install(None, None)


def test_redis_and_sql_outages_are_counted_with_their_latencies(instruments) -> None:
    with unavailable_on_error("read"):
        pass
    with pytest.raises(Unavailable), unavailable_on_error("read"):
        raise RedisConnectionError("connection refused")
    assert instruments.get_sample_value("cofounder_redis_errors_total") == 1
    assert (
        instruments.get_sample_value(
            "cofounder_redis_operation_duration_seconds_count", {"operation": "read"}
        )
        == 1
    )


async def test_sql_outages_are_counted(instruments) -> None:
    with pytest.raises(Unavailable):
        async with unavailable_on_connection_error():
            raise exc.OperationalError("SELECT 1", {}, Exception("unable to open database file"))
    with pytest.raises(ValueError, match="not an outage"):
        async with unavailable_on_connection_error():
            raise ValueError("not an outage")
    assert instruments.get_sample_value("cofounder_sql_errors_total") == 1
