"""Version-ordered writes: an older rebuild never overwrites a newer value."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from cofounder_server.live.versioned import LiveWrites, decode, put_if_newer

from .support import Engine, exact_commands


async def test_only_a_higher_version_replaces_the_value(engine: Engine, client: Redis, prefix: str) -> None:
    key = f"{prefix}summary"
    assert await put_if_newer(client, key, 5, '{"v":5}', 600) is True
    assert await put_if_newer(client, key, 3, '{"v":3}', 600) is False
    assert await put_if_newer(client, key, 5, '{"v":"again"}', 600) is False
    assert decode(await client.get(key)) == (5, '{"v":5}')
    assert await put_if_newer(client, key, 6, '{"v":6}', 600) is True
    assert await client.get(key) == b'6:{"v":6}'
    assert 590 <= await client.ttl(key) <= 600


async def test_a_write_is_one_evalsha_round_trip(engine: Engine, client: Redis, prefix: str) -> None:
    key = f"{prefix}one-trip"
    assert await put_if_newer(client, key, 1, "warm", 60) is True  # the script is loaded now
    versions = iter(range(2, 100))

    def write() -> Callable[[], Awaitable[bool]]:
        return lambda: put_if_newer(client, key, next(versions), "x", 60)

    # GET and SET are the script's own calls, counted by the server under their names.
    await exact_commands(client, write, {"evalsha": 1, "get": 1, "set": 1})


async def test_versions_compare_as_integers_beyond_double_precision(
    engine: Engine, client: Redis, prefix: str
) -> None:
    key = f"{prefix}big"
    big = 2**60
    assert await put_if_newer(client, key, big, "a", 60) is True
    # As Lua doubles, 2**60 and 2**60 + 1 are equal; as strings "9" > "1152...".
    assert await put_if_newer(client, key, 9, "b", 60) is False
    assert await put_if_newer(client, key, big + 1, "c", 60) is True
    assert await put_if_newer(client, key, big, "d", 60) is False
    assert decode(await client.get(key)) == (big + 1, "c")


async def test_a_value_without_a_version_is_replaced(engine: Engine, client: Redis, prefix: str) -> None:
    key = f"{prefix}garbage"
    await client.set(key, "not versioned at all")
    assert await put_if_newer(client, key, 0, "x", 60) is True
    assert await client.get(key) == b"0:x"
    await client.set(key, "007:padded")  # a foreign writer's leading zeros still order
    assert await put_if_newer(client, key, 7, "y", 60) is False
    assert await put_if_newer(client, key, 8, "y", 60) is True


async def test_concurrent_writers_leave_the_highest_version(
    engine: Engine, client: Redis, prefix: str
) -> None:
    key = f"{prefix}race"
    versions = list(range(1, 101))
    random.Random(7).shuffle(versions)
    results = await asyncio.gather(*(put_if_newer(client, key, v, f"payload-{v}", 60) for v in versions))
    assert decode(await client.get(key)) == (100, "payload-100")
    assert any(results)


async def test_the_script_is_reloaded_after_script_flush(engine: Engine, client: Redis, prefix: str) -> None:
    if not engine.private:
        pytest.skip("SCRIPT FLUSH would disturb other users of a shared server")
    key = f"{prefix}noscript"
    assert await put_if_newer(client, key, 1, "a", 60) is True
    await client.script_flush()
    assert await put_if_newer(client, key, 2, "b", 60) is True
    assert await client.get(key) == b"2:b"


async def test_arguments_are_checked(client: Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="version"):
        await put_if_newer(client, f"{prefix}k", -1, "x", 60)
    with pytest.raises(ValueError, match="ttl"):
        await put_if_newer(client, f"{prefix}k", 1, "x", 0)


@pytest.mark.parametrize(
    "raw", [None, b"", b"abc", b":x", b"-1:x", b"1x:y", b"\xff:x", b"1:\xff", "٣:x", b" 1:x"]
)
def test_decode_treats_garbage_as_absent(raw: bytes | str | None) -> None:
    assert decode(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"7:", (7, "")), (b"12:a:b", (12, "a:b")), ("3:x", (3, "x")), ("0:é".encode(), (0, "é"))],
)
def test_decode(raw: bytes | str, expected: tuple[int, str]) -> None:
    assert decode(raw) == expected


async def test_live_writes_run_as_one_command_with_put_if_newer_semantics(
    engine: Engine, client: Redis, prefix: str
) -> None:
    newer, older = f"{prefix}lw-newer", f"{prefix}lw-older"
    derived, refused, gone = f"{prefix}lw-derived", f"{prefix}lw-refused", f"{prefix}lw-gone"
    assert await put_if_newer(client, older, 9, "held", 600) is True
    assert await put_if_newer(client, newer, 2, "old", 600) is True
    await client.set(gone, "x")
    await client.set(refused, "kept")
    writes = LiveWrites()
    writes.put_if_newer(newer, 3, "new", 600)
    writes.set_if_current(derived, "42", 90)  # follows a current write: runs
    writes.delete_if_current(gone)
    writes.put_if_newer(older, 8, "stale", 600)
    writes.set_if_current(refused, "older facts", 90)  # follows a refused write: skipped
    assert len(writes) == 5
    async with client.pipeline(transaction=False) as pipe:
        writes.queue(pipe)
        assert len(pipe.command_stack) == 1
        await pipe.execute()
    assert decode(await client.get(newer)) == (3, "new")
    assert decode(await client.get(older)) == (9, "held")
    assert await client.get(derived) == b"42"
    assert 80 <= await client.ttl(derived) <= 90
    assert await client.exists(gone) == 0
    assert await client.get(refused) == b"kept"
    with pytest.raises(ValueError, match="version must not be negative"):
        writes.put_if_newer(newer, -1, "x", 60)


async def test_live_writes_keep_payloads_and_versions_byte_for_byte(
    engine: Engine, client: Redis, prefix: str
) -> None:
    """The writes travel as one JSON argument: what is stored is exactly what was given,
    whatever the payload's characters and however large the version."""
    key, derived = f"{prefix}lw-exact", f"{prefix}lw-exact-derived"
    payload = 'quotes " and \\ backslash, é ☃ 𝄞, a NUL \x00, newline\n, {"json": [1, 2]}'
    version = 2**64 + 1  # beyond a double's precision: compared as digits, never as a number
    writes = LiveWrites()
    writes.put_if_newer(key, version, payload, 600)
    writes.set_if_current(derived, payload, 60)
    async with client.pipeline(transaction=False) as pipe:
        writes.queue(pipe)
        await pipe.execute()
    assert await client.get(key) == f"{version}:{payload}".encode()
    assert await client.get(derived) == payload.encode()
    again = LiveWrites()
    again.put_if_newer(key, version - 1, "older", 600)
    async with client.pipeline(transaction=False) as pipe:
        again.queue(pipe)
        await pipe.execute()
    assert decode(await client.get(key)) == (version, payload)
