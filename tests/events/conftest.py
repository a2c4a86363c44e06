"""Fixtures for the event feed tests: the session server's event log, and a second replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from cofounder_server.store.database import Database, open_database
from cofounder_server.store.events import EventLogRepository
from tests.support import RPC_TIMEOUT

REPLICA_BUFFER_EVENTS = 16


@pytest.fixture(scope="session")
async def database(app: Application) -> AsyncIterator[Database]:
    """The session server's database, opened separately (as another replica would)."""
    db = await open_database(app.database_url)
    yield db
    await db.close()


@pytest.fixture(scope="session")
def event_log(database: Database) -> EventLogRepository:
    """An event log repository on the session server's database."""
    return EventLogRepository(database, retention_events=100_000)


async def start_replica(
    app: Application, settings_for: Callable[..., Settings], clock: ManualClock, **overrides: object
) -> Application:
    """Another server process sharing the session server's Redis and SQL."""
    settings = settings_for(app.database_url, redis_url=app.redis_url, **overrides)
    return await Application.start(settings, clock=clock)


@pytest.fixture(scope="session")
async def replica(
    app: Application, settings_for: Callable[..., Settings], clock: ManualClock
) -> AsyncIterator[Application]:
    """A second server on the same Redis and SQL, with a small per-stream buffer."""
    second = await start_replica(app, settings_for, clock, watch_buffer_events=REPLICA_BUFFER_EVENTS)
    yield second
    await second.stop(grace_seconds=1.0)


@pytest.fixture(scope="session")
async def replica_stub(
    replica: Application,
) -> AsyncIterator[agent_control_service_pb2_grpc.AgentControlServiceStub]:
    """A stub on its own channel to the replica."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT)
        yield agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
