"""Redis clients for a long-running server, and the mapping of Redis outages to ``Unavailable``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cofounder_server import observability
from cofounder_server.domain.errors import Unavailable


def create_client(
    url: str,
    *,
    max_connections: int = 64,
    pool_timeout: float = 5.0,
    socket_timeout: float = 5.0,
) -> Redis:
    """A client whose callers wait up to ``pool_timeout`` for a free connection.

    redis-py's default pool raises at once when its 100 connections are in use; a blocking
    pool turns a burst into a short queue, and a real shortage into ``ConnectionError``
    (hence ``Unavailable``) after the timeout.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        # One immediate retry on a fresh connection: pooled connections that died with a
        # Redis restart fail once each. Longer outages surface at once as Unavailable.
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


@contextmanager
def unavailable_on_error(operation: str) -> Iterator[None]:
    """Re-raise Redis connection failures and timeouts inside the block as ``Unavailable``."""
    started = time.perf_counter()
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        observability.metrics.redis_errors.inc()
        raise Unavailable(f"Redis is unavailable ({operation}): {exc}") from exc
    observability.metrics.redis_seconds(operation).observe(time.perf_counter() - started)
