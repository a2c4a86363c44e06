"""The tracked cache: hits without round trips, invalidation by Redis, and safe degradation."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from cofounder_server.domain.errors import Unavailable
from cofounder_server.live.engine import EmbeddedRedis
from cofounder_server.live.tracked_cache import TrackedCache

from .support import Engine, eventually, exact_commands, until

MakeCache = Callable[..., Awaitable[TrackedCache]]


@pytest.fixture
async def make_cache(engine: Engine) -> AsyncIterator[MakeCache]:
    """Start caches on the engine; all are stopped after the test."""
    caches: list[TrackedCache] = []

    async def make(prefixes: list[str], url: str | None = None, **options: Any) -> TrackedCache:
        cache = TrackedCache(url or engine.url, prefixes, **options)
        caches.append(cache)
        await cache.start()
        return cache

    yield make
    for cache in caches:
        await cache.stop()


def reads(cache: TrackedCache, *keys: str) -> Callable[[], Awaitable[list[bytes | None]]]:
    return lambda: cache.get_many(keys)


async def cached_read(cache: TrackedCache, *keys: str) -> list[bytes | None]:
    """Read until all ``keys`` are served from memory, and return their values.

    A fetch is not cached when an invalidation arrives while it is in flight, and the
    invalidation of a write made just before the read may still be on its way.
    """

    async def read() -> tuple[list[bytes | None], int]:
        hits = cache.stats.hits
        values = await cache.get_many(keys)
        return values, cache.stats.hits - hits

    values, _ = await eventually(read, lambda result: result[1] == len(keys), within=2)
    return values


async def test_a_hit_costs_no_redis_command(make_cache: MakeCache, client: Redis, prefix: str) -> None:
    cache = await make_cache([prefix])
    assert cache.stats.coherent
    present, absent = f"{prefix}present", f"{prefix}absent"
    await client.set(present, "1")
    assert await cached_read(cache, present, absent) == [b"1", None]
    hits = cache.stats.hits

    await exact_commands(client, lambda: reads(cache, present, absent, present), {})

    assert await cache.get_many([present, absent]) == [b"1", None]
    assert cache.stats.hits >= hits + 5


async def test_all_misses_share_one_round_trip(make_cache: MakeCache, client: Redis, prefix: str) -> None:
    cache = await make_cache([prefix])
    batch = itertools.count()

    def read_fresh_keys() -> Callable[[], Awaitable[object]]:
        n = next(batch)
        # Three tracked keys (one repeated) and one outside the prefixes, read through.
        keys = [
            f"{prefix}{n}:a",
            f"{prefix}{n}:b",
            f"{prefix}{n}:a",
            f"{prefix}{n}:c",
            f"untracked:{uuid.uuid4()}",
        ]
        return lambda: cache.get_many(keys)

    # One pipeline: a single MGET for all, a PTTL per tracked key for its local deadline.
    await exact_commands(client, read_fresh_keys, {"mget": 1, "pttl": 3})


async def test_keys_outside_the_prefixes_are_never_cached(
    make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    cache = await make_cache([f"{prefix}tracked:"])
    key = f"{prefix}other"
    await client.set(key, "1")
    assert await cache.get_many([key]) == [b"1"]
    await exact_commands(client, lambda: reads(cache, key), {"mget": 1})
    assert cache.stats.entries == 0


async def test_a_write_by_another_client_invalidates(
    make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    cache = await make_cache([prefix])
    key = f"{prefix}k"
    await client.set(key, "v1")
    assert await cached_read(cache, key) == [b"v1"]
    invalidations = cache.stats.invalidations

    await client.set(key, "v2")
    await eventually(reads(cache, key), lambda v: v == [b"v2"], within=2)
    assert cache.stats.invalidations > invalidations

    await client.delete(key)
    await eventually(reads(cache, key), lambda v: v == [None], within=2)


async def test_holds_says_whether_a_read_would_be_answered_from_memory(
    make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    cache = await make_cache([prefix])
    present, absent = f"{prefix}present", f"{prefix}absent"
    await client.set(present, "1")
    assert [cache.holds(present), cache.holds(absent)] == [False, False]

    await cached_read(cache, present, absent)
    assert [cache.holds(present), cache.holds(absent)] == [True, True]
    hits = cache.stats.hits
    await cache.get_many([present, absent])
    assert cache.stats.hits == hits + 2  # as promised: no Redis read

    cache.invalidate([present])
    assert [cache.holds(present), cache.holds(absent)] == [False, True]


async def test_an_absent_key_is_cached_until_it_is_created(
    make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    cache = await make_cache([prefix])
    key = f"{prefix}later"
    assert await cache.get_many([key]) == [None]
    hits = cache.stats.hits
    assert await cache.get_many([key]) == [None]
    assert cache.stats.hits == hits + 1

    await client.set(key, "now")
    await eventually(reads(cache, key), lambda v: v == [b"now"], within=2)


async def test_a_key_is_not_served_past_its_ttl(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    cache = await make_cache([prefix])
    key = f"{prefix}short"
    if engine.private:
        # Without active expiry Redis sends no expiry invalidation until the key is touched,
        # so only the local deadline can keep the stale value from being served.
        await client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")
    try:
        await client.set(key, "soon gone", px=1000)  # long enough to be served from memory first
        written = time.monotonic()
        assert await cached_read(cache, key) == [b"soon gone"]
        invalidations = cache.stats.invalidations

        # The key's TTL is the condition. Half a second past it: Redis reads PTTL from a clock it
        # caches per event-loop turn, and a starved engine (a niced CI run) lags by more than the
        # cache's margin; without a local deadline the value would be served for ever.
        await asyncio.sleep(written + 1.5 - time.monotonic())

        if engine.private:
            assert cache.stats.invalidations == invalidations, "an expiry notice arrived after all"
        assert await cache.get_many([key]) == [None]
    finally:
        if engine.private:
            await client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "1")


async def test_flushall_clears_the_cache(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    if not engine.private:
        pytest.skip("FLUSHALL only on the session's own engine")
    cache = await make_cache([prefix])
    first, second = f"{prefix}1", f"{prefix}2"
    await client.mset({first: "a", second: "b"})
    assert await cached_read(cache, first, second) == [b"a", b"b"]
    assert cache.stats.entries == 2

    await client.flushall()

    await until(lambda: cache.stats.entries == 0, within=2)
    assert await cache.get_many([first, second]) == [None, None]


async def test_losing_the_tracking_connection_reads_through_then_recovers(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    # A fixed reconnect delay of 0.5-1 s leaves a window to observe the degraded mode.
    cache = await make_cache([prefix], reconnect_min_delay=1.0, reconnect_max_delay=1.0)
    key = f"{prefix}k"
    await client.set(key, "v1")
    assert await cached_read(cache, key) == [b"v1"]
    lost = cache.tracking_client_id
    assert lost is not None

    if engine.private:
        assert await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
    else:
        assert await client.execute_command("CLIENT", "KILL", "ID", lost) == 1
    await until(lambda: not cache.stats.coherent, within=2)
    assert cache.stats.entries == 0

    # Every read now goes to Redis and sees the latest write at once.
    for value in (b"v2", b"v3"):
        await client.set(key, value)
        misses = cache.stats.misses
        assert await cache.get_many([key]) == [value]
        assert await cache.get_many([key]) == [value]
        assert cache.stats.misses == misses + 2
    assert not cache.stats.coherent, "recovered too early for this test to mean anything"

    await until(lambda: cache.stats.coherent, within=5)
    assert cache.tracking_client_id not in (None, lost)
    assert await cached_read(cache, key) == [b"v3"]
    await client.set(key, "v4")
    await eventually(reads(cache, key), lambda v: v == [b"v4"], within=2)


async def test_a_silent_tracking_connection_is_detected(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    if not engine.private:
        pytest.skip("CLIENT PAUSE would stall other users of a shared server")
    cache = await make_cache([prefix], health_check_interval=0.05, reconnect_min_delay=1.0)
    key = f"{prefix}k"
    await client.set(key, "v1")
    assert await cache.get_many([key]) == [b"v1"]

    # The server stops answering (the connection stays open): the PING goes unanswered.
    await client.execute_command("CLIENT", "PAUSE", 500, "ALL")
    await until(lambda: not cache.stats.coherent, within=0.45)
    assert cache.stats.entries == 0
    await until(lambda: cache.stats.coherent, within=5)


async def test_an_idle_tracking_connection_is_kept(make_cache: MakeCache, client: Redis, prefix: str) -> None:
    cache = await make_cache([prefix], health_check_interval=0.05)
    tracking = cache.tracking_client_id

    async def last_command() -> str:
        listing = await client.execute_command("CLIENT", "LIST", "ID", tracking)
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        return text.split(" cmd=")[1].split()[0]

    # Idle, the connection is health-checked with PING rather than left to time out.
    await eventually(last_command, lambda cmd: cmd == "ping", within=2)
    await eventually(last_command, lambda cmd: cmd == "ping", within=2)
    assert cache.stats.coherent
    assert cache.tracking_client_id == tracking


async def test_tracking_refused_reads_through_until_allowed(
    engine: Engine, embedded_engine: EmbeddedRedis, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    if not engine.private:
        pytest.skip("ACL changes only on the session's own engine")
    user, password = f"cftest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await client.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-client|tracking"
    )
    try:
        url = f"unix://{user}:{password}@{embedded_engine.url.removeprefix('unix://')}"
        cache = await make_cache([prefix], url=url, reconnect_min_delay=0.05, reconnect_max_delay=0.2)
        assert not cache.stats.coherent
        key = f"{prefix}k"
        for value in (b"v1", b"v2"):
            await client.set(key, value)
            assert await cache.get_many([key]) == [value]
        assert cache.stats.hits == 0

        await client.execute_command("ACL", "SETUSER", user, "+client|tracking")
        await until(lambda: cache.stats.coherent, within=5)
        assert await cache.get_many([key]) == [b"v2"]
        assert await cache.get_many([key]) == [b"v2"]
        assert cache.stats.hits == 1
    finally:
        await client.execute_command("ACL", "DELUSER", user)


async def test_redis_going_away_raises_unavailable_and_recovers(tmp_path: Path) -> None:
    engine = EmbeddedRedis(tmp_path)
    url = await engine.start()
    cache = TrackedCache(url, ["k:"], reconnect_min_delay=0.05, reconnect_max_delay=0.2)
    writer = Redis.from_url(url)
    try:
        await cache.start()
        await writer.set("k:a", "1")
        assert await cache.get_many(["k:a"]) == [b"1"]
        assert await cache.get_many(["k:a"]) == [b"1"]

        await writer.aclose()
        await engine.stop()
        await until(lambda: not cache.stats.coherent, within=2)
        with pytest.raises(Unavailable):
            await cache.get_many(["k:a"])

        # The same socket path comes back (empty: nothing is persisted).
        await engine.start()
        await until(lambda: cache.stats.coherent, within=5)
        writer = Redis.from_url(url)
        await writer.set("k:a", "2")
        await eventually(reads(cache, "k:a"), lambda v: v == [b"2"], within=2)
    finally:
        await cache.stop()
        await writer.aclose()
        await engine.stop()


async def test_starting_without_redis_reads_fail_as_unavailable(tmp_path: Path) -> None:
    cache = TrackedCache(f"unix://{tmp_path}/nothing.sock", ["k:"])
    await cache.start()
    try:
        assert not cache.stats.coherent
        with pytest.raises(Unavailable):
            await cache.get_many(["k:a"])
    finally:
        await cache.stop()
    with pytest.raises(RuntimeError, match="not started"):
        await cache.get_many(["k:a"])


async def test_least_recently_used_entries_are_evicted(
    make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    k1, k2, k3, k4 = (f"{prefix}{n}" for n in range(1, 5))
    await client.mset({k1: "1", k2: "2", k3: "3", k4: "4"})
    cache = await make_cache([prefix], max_entries=3)
    for key in (k1, k2, k3):
        await cache.get_many([key])
    await cache.get_many([k1])  # k1 is now the most recent; k2 the least
    await cache.get_many([k4])
    assert cache.stats.entries == 3

    hits, misses = cache.stats.hits, cache.stats.misses
    assert await cache.get_many([k1, k3, k4]) == [b"1", b"3", b"4"]
    assert (cache.stats.hits, cache.stats.misses) == (hits + 3, misses)
    assert await cache.get_many([k2]) == [b"2"]
    assert cache.stats.misses == misses + 1


async def test_overlapping_prefixes_are_accepted(make_cache: MakeCache, client: Redis, prefix: str) -> None:
    # Redis refuses overlapping BCAST prefixes; the cache keeps only the covering ones.
    cache = await make_cache([f"{prefix}a:", prefix, f"{prefix}b", prefix])
    assert cache.stats.coherent
    key = f"{prefix}a:1"
    await client.set(key, "1")
    assert await cache.get_many([key]) == [b"1"]
    await client.set(key, "2")
    await eventually(reads(cache, key), lambda v: v == [b"2"], within=2)


async def test_url_options_cannot_switch_the_tracking_protocol(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    # With RESP3 the invalidations would arrive as pushes that the Pub/Sub reader ignores.
    url = f"{engine.url}{'&' if '?' in engine.url else '?'}protocol=3"
    cache = await make_cache([prefix], url=url)
    assert cache.stats.coherent
    key = f"{prefix}k"
    await client.set(key, "1")
    assert await cached_read(cache, key) == [b"1"]
    await client.set(key, "2")
    await eventually(reads(cache, key), lambda v: v == [b"2"], within=2)


def test_prefixes_are_required() -> None:
    with pytest.raises(ValueError, match="prefix"):
        TrackedCache("redis://localhost", [])


async def test_a_fetch_racing_a_write_does_not_resurrect_the_old_value(
    engine: Engine, make_cache: MakeCache, client: Redis, prefix: str
) -> None:
    if not engine.private:
        pytest.skip("DEBUG SLEEP would stall other users of a shared server")
    cache = await make_cache([prefix])
    await cache.get_many([f"{prefix}warm-up"])  # the cache's data connection exists
    sleeper, writer = Redis.from_url(engine.url), Redis.from_url(engine.url)
    await sleeper.ping()
    await writer.ping()
    raced = 0
    try:
        for attempt in range(5):
            key = f"{prefix}race{attempt}"
            await client.set(key, "old")
            # While the server sleeps, the cache's read and then a write queue up. When it
            # wakes it runs the read first (old value), then the write, and sends the
            # invalidation ahead of the read's reply: the cache must not keep "old".
            asleep = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", "0.2"))
            await asyncio.sleep(0.03)
            fetch = asyncio.create_task(cache.get_many([key]))
            await asyncio.sleep(0.03)
            await writer.set(key, "new")
            await asyncio.wait_for(asleep, 2)
            if await fetch == [b"old"]:
                raced += 1
            await eventually(reads(cache, key), lambda v: v == [b"new"], within=2)
    finally:
        await sleeper.aclose()
        await writer.aclose()
    assert raced, "the read never ran before the write; the race was not exercised"
