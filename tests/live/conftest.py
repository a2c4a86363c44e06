"""Fixtures: one embedded engine per session, and the external Redis named by
``COFOUNDER_TEST_REDIS_URL`` when set. Tests on a shared server touch only keys under a
prefix of their own and delete them afterwards; server-wide commands run only on the
embedded engine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cofounder_server.live.engine import EmbeddedRedis

from .support import EXTERNAL_REDIS_URL, Engine

ENGINES = [
    "embedded",
    pytest.param(
        "external",
        marks=[
            pytest.mark.external,
            pytest.mark.skipif(not EXTERNAL_REDIS_URL, reason="COFOUNDER_TEST_REDIS_URL is not set"),
        ],
    ),
]


@pytest.fixture(scope="session")
async def embedded_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedRedis]:
    """The session's embedded engine; DEBUG is enabled for expiry and race tests."""
    engine = EmbeddedRedis(
        tmp_path_factory.mktemp("live-redis"), extra_args=["--enable-debug-command", "local"]
    )
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, embedded_engine: EmbeddedRedis) -> Engine:
    """Each engine under test in turn."""
    if request.param == "external":
        return Engine("external", EXTERNAL_REDIS_URL, private=False)
    return Engine("embedded", embedded_engine.url, private=True)


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Redis]:
    """A plain client of the engine: the test's view of the server, and "another replica"."""
    redis = Redis.from_url(engine.url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    """A key prefix no other test or run uses; its keys are deleted afterwards."""
    unique = f"cftest:{uuid.uuid4().hex}:"
    yield unique
    async for key in client.scan_iter(match=f"{unique}*", count=1000):
        await client.delete(key)


@pytest.fixture
async def job_id(client: Redis) -> AsyncIterator[str]:
    """A job id no other test or run uses; its live keys are deleted afterwards."""
    unique = f"cftest-{uuid.uuid4().hex}"
    yield unique
    async for key in client.scan_iter(match=f"cofounder:*:{unique}:*", count=1000):
        await client.delete(key)
