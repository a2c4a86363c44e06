"""Redis clients for a long-running server, and the mapping of Redis outages to ``Unavailable``.

A URL names one Redis server (``redis://``, ``rediss://``, ``unix://``) or, with
``redis+sentinel://``, the primary that Redis Sentinel currently reports: then every new
connection asks the sentinels first, so after a failover the clients reconnect to the
promoted replica (see :mod:`cofounder_server.live.sentinel_url`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cofounder_server import observability
from cofounder_server.domain.errors import Unavailable
from cofounder_server.live.sentinel_url import is_sentinel_url, parse_sentinel_url


class _SentinelPool(SentinelConnectionPool):
    """A pool of connections to the primary a :class:`Sentinel` reports; closing it closes the
    connections to the sentinels as well."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.sentinel_manager.aclose()


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """:class:`_SentinelPool` whose callers wait for a free connection, as with one server."""


def connection_pool(
    url: str,
    options: Mapping[str, Any],
    *,
    pool_class: type[ConnectionPool] = ConnectionPool,
    url_options_win: bool = False,
) -> ConnectionPool:
    """A pool of connections to the Redis ``url`` names, made with ``options`` (over the
    options in the URL's query string, unless ``url_options_win``); ``ValueError`` for a URL
    that is not one.

    Used as a factory of dedicated connections too (``make_connection``): with a Sentinel URL
    each one connects to whichever server is the primary at that moment. Close it with
    ``aclose()``.
    """
    if not is_sentinel_url(url):
        in_url = parse_url(url)
        return pool_class(**({**options, **in_url} if url_options_win else {**in_url, **options}))
    parsed = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(
        list(parsed.sentinels),
        # Failing over needs no second sentinel's agreement here: the sentinels agree among
        # themselves before they report a new primary.
        min_other_sentinels=0,
        sentinel_kwargs={**timeouts, **parsed.sentinel_options()},
    )
    sentinel_pool: type[_SentinelPool] = (
        _BlockingSentinelPool if issubclass(pool_class, BlockingConnectionPool) else _SentinelPool
    )
    return sentinel_pool(
        parsed.service_name,
        sentinel,
        **{**parsed.server_options(), **options},
    )


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
    pool = connection_pool(
        url,
        {
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            # One immediate retry on a fresh connection: pooled connections that died with a
            # Redis restart (or a failover) fail once each. Longer outages surface at once as
            # Unavailable.
            "retry": Retry(NoBackoff(), 1),
        },
        pool_class=BlockingConnectionPool,
        url_options_win=True,
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
