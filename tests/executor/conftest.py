"""Executor tests: each test runs its own servers (executor on) on a database of its own.

Time is the test's ManualClock (starting 2026-03-10 12:00 UTC), so budget windows and wake
times move when the test says. A ``gated`` brain (the scripted brain, one turn per permit)
lets a test hold an agent mid-run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.config import Settings
from cofounder_server.executor.brains.scripted import ScriptedBrainFactory
from cofounder_server.executor.registry import PluginRegistry
from cofounder_server.live.engine import EmbeddedRedis
from tests.executor_plugins.counting_tool import CountingTool
from tests.support import EXTERNAL_REDIS, RPC_TIMEOUT, throwaway_database

from .support import BrokenTool, DeployTool, EchoTool, FlakyTool, Gate, GatedBrain

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """Empty (a SQLite file in the server's data dir) or a new PostgreSQL database."""
    async with throwaway_database("cofounder_exec") as url:
        yield url


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="session")
async def shared_redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """One Redis for every executor test (keys and messages are per job): the external one,
    or one embedded engine, instead of an engine per server (fewer forks of a process that
    runs gRPC threads, which now and then abort a child during start-up)."""
    if EXTERNAL_REDIS:
        yield EXTERNAL_REDIS
        return
    engine = EmbeddedRedis(tmp_path_factory.mktemp("executor-redis"))
    url = await engine.start()
    yield url
    await engine.stop()


@pytest.fixture
def executor_settings(
    settings_for: Callable[..., Settings], fresh_database_url: str, shared_redis_url: str
) -> Callable[..., Settings]:
    """Settings of an executor test server (one data dir per test unless given)."""
    base = settings_for(
        fresh_database_url,
        redis_url=shared_redis_url,
        executor_enabled=True,
        brain_retry_delay_seconds=0.0,
        claim_interval_seconds=0.2,
        rate_limit_per_second=0.0,
    )

    def make(**overrides: Any) -> Settings:
        return replace(base, **overrides)

    return make


def registry_for(settings: Settings, gate: Gate) -> PluginRegistry:
    registry = PluginRegistry.default(settings, entry_points=False)
    scripted = ScriptedBrainFactory(settings.scripted_turns_dir)
    registry.register_brain("gated", lambda spec: GatedBrain(spec, gate, scripted))
    registry.register_tool("echo", EchoTool)
    registry.register_tool("broken", BrokenTool)
    registry.register_tool("flaky", FlakyTool)
    registry.register_tool("deploy", DeployTool)
    registry.register_tool("counter", CountingTool)
    return registry


Starter = Callable[..., Awaitable[Application]]


@pytest.fixture
async def start_server(
    executor_settings: Callable[..., Settings], manual_clock: ManualClock, gate: Gate
) -> AsyncIterator[Starter]:
    """Start an executor server (``settings`` or overrides); every one is stopped at the end."""
    started: list[tuple[Application, PluginRegistry]] = []

    async def start(settings: Settings | None = None, **overrides: Any) -> Application:
        settings = settings or executor_settings(**overrides)
        registry = registry_for(settings, gate)
        app = await Application.start(settings, clock=manual_clock, plugins=registry)
        started.append((app, registry))
        return app

    yield start
    for app, registry in reversed(started):
        await app.stop(grace_seconds=1.0)
        await registry.aclose()  # a registry handed to the server is its caller's to close


@pytest.fixture
async def server(start_server: Starter) -> Application:
    return await start_server()


@pytest.fixture
async def stub(server: Application) -> AsyncIterator[agent_control_service_pb2_grpc.AgentControlServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await channel.channel_ready()
        yield agent_control_service_pb2_grpc.AgentControlServiceStub(channel)


def stub_for(channel: grpc.aio.Channel) -> agent_control_service_pb2_grpc.AgentControlServiceStub:
    return agent_control_service_pb2_grpc.AgentControlServiceStub(channel)


__all__ = ["RPC_TIMEOUT", "START", "Starter", "stub_for"]


@pytest.fixture
async def redis_client(server: Application) -> AsyncIterator[Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(server.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def project_id() -> str:
    return f"proj-{uuid.uuid4().hex[:12]}"
