"""An in-process read cache of Redis string keys, kept coherent by Redis itself.

Redis server-assisted client-side caching in broadcast mode: one dedicated connection runs
``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX ...`` and then subscribes to
``__redis__:invalidate``, so Redis publishes the name of every key under the prefixes that is
written, deleted, expired or evicted (or a null for FLUSHALL/FLUSHDB) to that same
connection. Tracking state lives on the connection that enabled it; redirecting to itself
makes "tracking is on" and "invalidations arrive" one connection that lives or dies as a
whole, so losing it is always noticed. RESP2 is used there because redis.asyncio has no
public hook for RESP3 invalidation pushes (redis-py issue #3916); data reads use a normal
pool.

Guarantees:

* A hit costs no Redis round trip; all misses of one call share one round trip.
* An entry is dropped when its invalidation arrives, and is never served past the key's
  Redis TTL (a local deadline from PTTL), even if the expiry notice is late.
* A fetched value is not stored if an invalidation for its key (or a flush) arrived while
  it was in flight, so a slow read cannot resurrect an old value.
* While the tracking connection is down (or cannot be set up) nothing is cached: every
  read goes to Redis, and tracking is re-established in the background with backoff.
  A silent connection is detected by PING within about two ``health_check_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cofounder_server.live.connect import connection_pool, create_client, unavailable_on_error

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = b"__redis__:invalidate"
TRACKING_CLIENT_NAME = "cofounder-tracked-cache"


EXPIRY_MARGIN_SECONDS = 0.25
"""How long before a key's reported expiry the cache stops serving it. Redis's clock for PTTL
can lag real time by a whole event-loop turn on a loaded machine (50 ms was not enough with two
test suites on 2 cores); a key is read again a quarter second early at worst."""


@dataclass(frozen=True)
class CacheStats:
    """Counters of a :class:`TrackedCache` since it was created.

    ``misses`` counts keys read from Redis (including every read while not coherent);
    ``invalidations`` counts invalidated keys, a flush counting once; ``coherent`` is
    whether tracking is established and hits are being served.
    """

    hits: int
    misses: int
    invalidations: int
    entries: int
    coherent: bool


@dataclass(slots=True)
class _Entry:
    value: bytes | None
    deadline: float  # time.monotonic() after which the key may have expired in Redis


@dataclass(slots=True)
class _Watch:
    """Invalidations of a key seen while fetches of it are in flight."""

    fetches: int = 0
    invalidations: int = 0


def _normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    # Redis rejects overlapping BCAST prefixes; a prefix already covers every longer one,
    # and in sorted order such longer prefixes directly follow it.
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    if not kept:
        raise ValueError("at least one key prefix is required")
    return tuple(kept)


class TrackedCache:
    """A coherent in-process cache of Redis string keys under ``prefixes``.

    Keys outside the prefixes are read through (never cached). Call :meth:`start` before
    use and :meth:`stop` at shutdown.
    """

    def __init__(
        self,
        redis_url: str,
        prefixes: Sequence[str],
        max_entries: int = 100_000,
        *,
        max_connections: int = 64,
        health_check_interval: float = 1.0,
        connect_timeout: float = 5.0,
        reconnect_min_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        """Configure (not connect) a cache on ``redis_url``.

        ``health_check_interval``: after this long without traffic the tracking connection
        is PINGed, and declared dead if the reply takes as long again.
        ``reconnect_*_delay``: bounds of the exponential backoff (with jitter) between
        attempts to re-establish tracking.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._url = redis_url
        self._prefixes = _normalize_prefixes(prefixes)
        self._max_entries = max_entries
        self._max_connections = max_connections
        self._health_check_interval = health_check_interval
        self._connect_timeout = connect_timeout
        self._reconnect_min_delay = reconnect_min_delay
        self._reconnect_max_delay = reconnect_max_delay

        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._watches: dict[str, _Watch] = {}
        # Bumped whenever everything is invalidated at once: a fetch that started under an
        # older epoch must not store its result.
        self._epoch = 0
        self._coherent = False
        self._tracking_client_id: int | None = None
        self._hits = 0
        self._misses = 0
        self._invalidations = 0

        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            invalidations=self._invalidations,
            entries=len(self._entries),
            coherent=self._coherent,
        )

    @property
    def tracking_client_id(self) -> int | None:
        """Redis client id of the tracking connection while it is established."""
        return self._tracking_client_id

    async def start(self) -> None:
        """Connect and try once to establish tracking.

        Does not fail when Redis is unreachable or refuses tracking: reads then go to Redis
        (and fail with ``Unavailable`` while it is down) until tracking is established.
        """
        if self._task is not None:
            raise RuntimeError("TrackedCache is already started")
        self._client = create_client(self._url, max_connections=self._max_connections)
        first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._maintain_tracking(first_attempt), name="tracked-cache")
        await first_attempt.wait()

    async def stop(self) -> None:
        """Stop tracking, drop every entry and close the connections; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        self._set_coherent(False)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), in order.

        Raises ``Unavailable`` if Redis is needed (a miss) and cannot be reached.
        """
        client = self._started()
        if not keys:
            return []
        if not self._coherent:
            self._misses += len(keys)
            return await self._read(client, keys)

        now = time.monotonic()
        results: list[bytes | None] = [None] * len(keys)
        missing: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            entry = self._entries.get(key)
            if entry is not None and now < entry.deadline:
                self._entries.move_to_end(key)
                results[index] = entry.value
                self._hits += 1
            else:
                if entry is not None:
                    del self._entries[key]
                missing.setdefault(key, []).append(index)
        if missing:
            fetched = await self._fetch(client, list(missing))
            for key, value in zip(missing, fetched, strict=True):
                for index in missing[key]:
                    results[index] = value
        return results

    async def read_uncached(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` read from Redis in one round trip, even where memory holds
        them, and not cached. Raises ``Unavailable``."""
        return await self._read(self._started(), keys)

    def _started(self) -> Redis:
        if self._client is None:
            raise RuntimeError("TrackedCache is not started")
        return self._client

    @staticmethod
    async def _read(client: Redis, keys: Sequence[str]) -> list[bytes | None]:
        with unavailable_on_error("read"):
            values = await client.mget(keys)
        # Without decode_responses, values are bytes; redis-py's annotation admits str.
        return cast(list[bytes | None], values)

    def holds(self, key: str) -> bool:
        """Whether a read of ``key`` now would be answered from memory, without Redis."""
        entry = self._entries.get(key) if self._coherent else None
        return entry is not None and time.monotonic() < entry.deadline

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` now, after this process wrote them.

        Redis's invalidation message for our own write travels on another connection and may
        arrive after our next read; dropping the entries here gives read-your-writes.
        """
        for key in keys:
            self._invalidate(key)

    async def _fetch(self, client: Redis, keys: list[str]) -> list[bytes | None]:
        """Read ``keys`` in one round trip and cache those under the tracked prefixes."""
        self._misses += len(keys)
        cacheable = [key for key in keys if key.startswith(self._prefixes)]
        epoch = self._epoch
        seen = {key: self._watch(key) for key in cacheable}
        try:
            # Taken before sending, so the local deadline is never later than Redis's expiry.
            sent_at = time.monotonic()
            with unavailable_on_error("read"):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.mget(keys)
                    for key in cacheable:
                        pipe.pttl(key)
                    replies: list[Any] = await pipe.execute()
            values: list[bytes | None] = replies[0]
            # The epoch also moves when coherence is lost or regained.
            if self._epoch == epoch:
                by_key = dict(zip(keys, values, strict=True))
                for key, ttl_ms in zip(cacheable, replies[1:], strict=True):
                    if self._watches[key].invalidations == seen[key]:
                        self._store(key, by_key[key], ttl_ms, sent_at)
            return values
        finally:
            for key in cacheable:
                self._unwatch(key)

    def _watch(self, key: str) -> int:
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch()
        watch.fetches += 1
        return watch.invalidations

    def _unwatch(self, key: str) -> None:
        watch = self._watches[key]
        watch.fetches -= 1
        if watch.fetches == 0:
            del self._watches[key]

    def _store(self, key: str, value: bytes | None, ttl_ms: int, sent_at: float) -> None:
        if ttl_ms >= 0:
            # Redis computes PTTL from a clock it caches per event-loop turn, which lags real
            # time on a busy server; the margin keeps our deadline before the real expiry.
            deadline = sent_at + ttl_ms / 1000 - EXPIRY_MARGIN_SECONDS
            if deadline <= time.monotonic():
                return
        elif ttl_ms == -1 or value is None:
            # No TTL, or absent: only an invalidation ends it.
            deadline = math.inf
        else:
            # Read by MGET but gone by PTTL: it just expired, nothing worth caching.
            return
        self._entries[key] = _Entry(value, deadline)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _invalidate(self, key: str) -> None:
        self._invalidations += 1
        self._entries.pop(key, None)
        watch = self._watches.get(key)
        if watch is not None:
            watch.invalidations += 1

    def _invalidate_all(self) -> None:
        self._entries.clear()
        self._epoch += 1

    def _set_coherent(self, coherent: bool) -> None:
        # Entries fetched before the switch are not trusted either way: going down, no more
        # invalidations will arrive for them; coming up, they were read while none could.
        self._invalidate_all()
        self._coherent = coherent
        if not coherent:
            self._tracking_client_id = None

    async def _maintain_tracking(self, first_attempt: asyncio.Event) -> None:
        delay = self._reconnect_min_delay
        # These win over options in the URL's query string: they are not negotiable.
        options: dict[str, Any] = {
            # RESP2: invalidations must arrive as Pub/Sub messages (see the module doc).
            "protocol": 2,
            # Reads are bounded by the health check instead; an idle connection must
            # not be torn down by a socket timeout.
            "socket_timeout": None,
            "socket_connect_timeout": self._connect_timeout,
            "client_name": TRACKING_CLIENT_NAME,
            # Reconnecting is ours to do: a silently re-established connection would
            # carry no tracking.
            "retry": Retry(NoBackoff(), 0),
        }
        factory = connection_pool(self._url, options)
        try:
            while True:
                connection: AbstractConnection | None = None
                try:
                    connection = factory.make_connection()  # type: ignore[no-untyped-call]  # unannotated upstream
                    async with asyncio.timeout(self._connect_timeout):
                        self._tracking_client_id = await self._enable_tracking(connection)
                    self._set_coherent(True)
                    log.info("Redis tracking established for prefixes %s", self._prefixes)
                    delay = self._reconnect_min_delay
                    first_attempt.set()
                    await self._receive_invalidations(connection)
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning(
                        "Redis tracking unavailable, reading through until it is back: %s: %s",
                        type(exc).__name__,
                        exc,
                    )
                except Exception:
                    log.exception("unexpected error in the Redis tracking connection")
                finally:
                    self._set_coherent(False)
                    first_attempt.set()
                    if connection is not None:
                        with contextlib.suppress(RedisError, OSError):
                            await connection.disconnect()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._reconnect_max_delay)
        finally:
            # With a Sentinel URL the factory holds connections to the sentinels.
            with contextlib.suppress(RedisError, OSError):
                await factory.aclose()

    async def _enable_tracking(self, connection: AbstractConnection) -> int:
        """Turn on broadcast tracking redirected to this same connection, then subscribe."""
        await connection.connect()  # type: ignore[no-untyped-call]  # unannotated upstream
        await connection.send_command("CLIENT", "ID")
        client_id = int(await connection.read_response())
        arguments: list[str | int] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
        for prefix in self._prefixes:
            # An empty prefix means every key, which is BCAST without PREFIX.
            if prefix:
                arguments += ["PREFIX", prefix]
        await connection.send_command(*arguments)
        await connection.read_response()
        await connection.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
        await connection.read_response()
        return client_id

    async def _receive_invalidations(self, connection: AbstractConnection) -> None:
        """Apply invalidations until the connection fails or stays silent after a PING."""
        ping_outstanding = False
        while True:
            message = await connection.read_response(timeout=self._health_check_interval)
            if message is None:
                if ping_outstanding:
                    raise RedisTimeoutError("no reply to PING on the tracking connection")
                await connection.send_command("PING", check_health=False)
                ping_outstanding = True
                continue
            ping_outstanding = False
            self._apply(message)

    def _apply(self, message: object) -> None:
        # Pub/Sub frames are [kind, channel, data]; the PING reply is [b"pong", b""].
        if not isinstance(message, list) or len(message) != 3:
            return
        kind, channel, data = message
        if kind != b"message" or channel != INVALIDATE_CHANNEL:
            return
        if data is None:
            self._invalidations += 1
            self._invalidate_all()
            return
        for raw_key in data:
            # Our keys are str sent as UTF-8; surrogateescape maps any other bytes to a str
            # that no cached key equals, instead of failing.
            self._invalidate(raw_key.decode("utf-8", "surrogateescape"))
