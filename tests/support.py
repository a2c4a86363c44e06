"""Helpers shared by the test packages: deadlines and the external-service switches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from sqlalchemy.engine import make_url

from cofounder.agent.v1 import job_pb2
from standins.postgres import throwaway_postgres
from tests.redis_cleanup import remember_jobs_in

T = TypeVar("T")
RPC_TIMEOUT = 10.0

EXTERNAL_REDIS = os.environ.get("COFOUNDER_TEST_REDIS_URL", "")
EXTERNAL_DATABASE = os.environ.get("COFOUNDER_TEST_DATABASE_URL", "")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 a moment ago, for a process that needs it given up front
    (or, unused, an address where nothing listens)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scripted_agent() -> job_pb2.AgentSpec:
    """A valid agent spec: the scripted brain with a one-turn script."""
    agent = job_pb2.AgentSpec(brain="scripted")
    agent.config.update({"turns": [{"text": "done"}]})
    return agent


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, within: float = 10.0
) -> T:
    """Poll ``probe`` until ``accept`` holds for its result; fail with the last result at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s; last result: {result!r}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str) -> AsyncIterator[str]:
    """Empty (use the embedded SQLite file) unless external PostgreSQL is configured; then a
    new database on it, dropped afterwards, so runs never see each other's rows."""
    if not EXTERNAL_DATABASE:
        yield ""
        return
    async with throwaway_postgres(EXTERNAL_DATABASE, prefix=prefix) as url:
        try:
            yield url
        finally:
            if EXTERNAL_REDIS:
                await remember_jobs_in(
                    make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
                )
