"""An authenticated server for the session, with one caller of every role."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.app import Application
from cofounder_server.config import Settings
from tests.auth.support import CALLERS, write_principals
from tests.support import RPC_TIMEOUT


@pytest.fixture(scope="session")
def principals_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's principals file (alice, bob, a service, an operator)."""
    return write_principals(tmp_path_factory.mktemp("auth") / "principals.toml", CALLERS)


@pytest.fixture(scope="session")
async def auth_app(
    settings_for: Callable[..., Settings], database_url: str, principals_path: Path
) -> AsyncIterator[Application]:
    """A server that authenticates every call; rate limits off so tests can call freely."""
    application = await Application.start(
        settings_for(
            database_url,
            auth_tokens_file=str(principals_path),
            rate_limit_per_second=0,
            service_rate_limit_per_second=0,
        )
    )
    yield application
    await application.stop(grace_seconds=1.0)


@pytest.fixture(scope="session")
async def auth_channel(auth_app: Application) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the authenticated server, shared by every caller (metadata is per call)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_app.port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT)
        yield channel


@pytest.fixture(scope="session")
def jobs(auth_channel: grpc.aio.Channel) -> agent_control_service_pb2_grpc.AgentControlServiceStub:
    """AgentControlService on the authenticated server."""
    return agent_control_service_pb2_grpc.AgentControlServiceStub(auth_channel)
