"""Health follows SQL writes, not only reachability: a full SQLite database is NOT_SERVING
(with one log line saying so) while writes fail, and SERVING again once they succeed.

SQLite's ``max_page_count`` on the server's own connections makes the database full for
real: every write that needs a new page fails with SQLITE_FULL, while ``SELECT 1`` works.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.api.agent_control import MAX_GOAL_CHARS
from cofounder_server.app import Application
from tests.support import RPC_TIMEOUT, eventually, scripted_agent

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_PAGES = 4_294_967_294  # SQLite's default limit


async def test_a_full_database_is_not_serving_until_writes_succeed(
    settings_for, database_url, caplog
) -> None:
    if database_url:
        pytest.skip("fills an SQLite database (its page limit); PostgreSQL has no such switch")
    caplog.set_level(logging.INFO)
    app = await Application.start(settings_for())
    page_limit = {"pages": 0}

    def limit_pages(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if page_limit["pages"]:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA max_page_count={page_limit['pages']}")
            cursor.close()

    event.listen(app.database.engine.sync_engine, "connect", limit_pages)

    async def limit(pages: int) -> None:
        page_limit["pages"] = pages
        # New connections for the pool, each with the limit in force.
        await app.database.engine.dispose()
        # And the writer thread's connection (group commits), which is not the pool's.
        pragma = f"PRAGMA max_page_count={pages or MAX_PAGES}"
        await app.database.transact(lambda connection: connection.exec_driver_sql(pragma))

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            jobs = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)

            async def overall() -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)).status)

            async def submit() -> grpc.StatusCode:
                try:
                    await jobs.SubmitJob(
                        pb.SubmitJobRequest(
                            project_id="full-disk",
                            goal="g" * MAX_GOAL_CHARS,
                            daily_budget_microdollars=1,
                            agent=scripted_agent(),
                        ),
                        timeout=RPC_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            assert await overall() == SERVING
            assert await submit() == grpc.StatusCode.OK
            # Clamped to the pages the file has now: no write may grow it.
            await limit(1)
            codes = [await submit() for _ in range(50)]
            assert grpc.StatusCode.UNAVAILABLE in codes, codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}

            await eventually(overall, lambda status: status == NOT_SERVING)
            lines = [r.getMessage() for r in caplog.records if r.name == "cofounder_server.api.health"]
            assert any(
                line.startswith("health: NOT_SERVING") and "sql writes (database or disk is full)" in line
                for line in lines
            ), lines
            # Reads still work: it is the writes that fail.
            listed = await jobs.ListJobs(pb.ListJobsRequest(project_id="full-disk"), timeout=RPC_TIMEOUT)
            assert len(listed.jobs) == codes.count(grpc.StatusCode.OK) + 1

            # Room again: nothing else writes, and the monitor's write probe sees the recovery.
            await limit(0)
            await eventually(overall, lambda status: status == SERVING)
            assert "health: SERVING" in [r.getMessage() for r in caplog.records]
            assert await submit() == grpc.StatusCode.OK
    finally:
        await app.stop(grace_seconds=0)
