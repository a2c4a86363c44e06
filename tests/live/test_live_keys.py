"""The live key contract: names, value formats and TTLs, as dashboards read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis.asyncio import Redis

from cofounder_server.clock import ManualClock, next_utc_midnight
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.model import AgentState
from cofounder_server.live import keys
from cofounder_server.live.keys import AgentKeys

from .support import Engine

START = datetime(2026, 1, 1, 23, 0, 0, tzinfo=UTC)


def test_key_names() -> None:
    assert keys.state_key("j1") == "cofounder:agent:j1:state"
    assert keys.budget_pct_key("j1") == "cofounder:agent:j1:budget_pct"
    assert keys.wake_at_key("j1") == "cofounder:agent:j1:wake_at"
    assert keys.wake_signal_key("j1") == "cofounder:agent:j1:wake_signal"
    assert keys.summary_key("j1") == "cofounder:job:j1:summary"
    for name in (keys.state_key("j1"), keys.summary_key("j1")):
        assert name.startswith(keys.KEY_PREFIX)
    with pytest.raises(ValueError, match="empty"):
        keys.state_key("")


@pytest.mark.parametrize("state", list(AgentState))
async def test_state_value_and_ttl(engine: Engine, client: Redis, job_id: str, state: AgentState) -> None:
    await AgentKeys(client, ManualClock(START)).set_state(job_id, state)
    assert await client.get(f"cofounder:agent:{job_id}:state") == state.value.encode()
    assert 89_990 <= await client.ttl(f"cofounder:agent:{job_id}:state") <= 90_000


@pytest.mark.parametrize(
    ("written", "stored"), [(42, b"42"), (0, b"0"), (100, b"100"), (137, b"100"), (-5, b"0")]
)
async def test_budget_pct_is_clamped_with_a_short_ttl(
    engine: Engine, client: Redis, job_id: str, written: int, stored: bytes
) -> None:
    await AgentKeys(client, ManualClock(START)).set_budget_pct(job_id, written)
    assert await client.get(f"cofounder:agent:{job_id}:budget_pct") == stored
    assert 85 <= await client.ttl(f"cofounder:agent:{job_id}:budget_pct") <= 90


async def test_wake_at_lives_until_the_wake_time_by_the_injected_clock(
    engine: Engine, client: Redis, job_id: str
) -> None:
    clock = ManualClock(START)
    agent = AgentKeys(client, clock)
    key = f"cofounder:agent:{job_id}:wake_at"

    await agent.set_wake_at(job_id, next_utc_midnight(clock.now()))
    assert await client.get(key) == b"2026-01-02T00:00:00+00:00"
    assert 3590 <= await client.ttl(key) <= 3600

    # A partial second rounds up: the key must not vanish before the agent wakes.
    await agent.set_wake_at(job_id, clock.now() + timedelta(seconds=7, milliseconds=200))
    assert await client.get(key) == b"2026-01-01T23:00:07.200000+00:00"
    assert 7 <= await client.ttl(key) <= 8

    # The wake time is given in another zone; the value is still UTC.
    await clock.advance(timedelta(minutes=30))
    await agent.set_wake_at(job_id, datetime(2026, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1))))
    assert await client.get(key) == b"2026-01-02T00:00:00+00:00"
    assert 1790 <= await client.ttl(key) <= 1800

    await agent.clear_wake_at(job_id)
    assert await client.exists(key) == 0


async def test_wake_at_in_the_past_still_lives_one_second(engine: Engine, client: Redis, job_id: str) -> None:
    clock = ManualClock(START)
    await AgentKeys(client, clock).set_wake_at(job_id, clock.now() - timedelta(hours=1))
    assert await client.pttl(f"cofounder:agent:{job_id}:wake_at") in range(1, 1001)


async def test_wake_at_must_be_timezone_aware(client: Redis, job_id: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await AgentKeys(client, ManualClock(START)).set_wake_at(job_id, datetime(2026, 1, 2))


async def test_a_wake_signal_is_taken_once(engine: Engine, client: Redis, job_id: str) -> None:
    agent = AgentKeys(client, ManualClock(START))
    assert await agent.take_wake_signal(job_id) is False
    await agent.signal_wake(job_id)
    assert await client.get(f"cofounder:agent:{job_id}:wake_signal") == b"1"
    assert 290 <= await client.ttl(f"cofounder:agent:{job_id}:wake_signal") <= 300
    assert await agent.take_wake_signal(job_id) is True
    assert await agent.take_wake_signal(job_id) is False


async def test_writers_raise_unavailable_when_redis_is_down(tmp_path: Path) -> None:
    redis = Redis.from_url(f"unix://{tmp_path}/nothing.sock")
    agent = AgentKeys(redis, ManualClock(START))
    try:
        with pytest.raises(Unavailable):
            await agent.set_state("j1", AgentState.WORKING)
        with pytest.raises(Unavailable):
            await agent.take_wake_signal("j1")
    finally:
        await redis.aclose()


async def test_values_read_back_through_the_parsers(engine: Engine, client: Redis, job_id: str) -> None:
    clock = ManualClock(START)
    agent = AgentKeys(client, clock)
    await agent.set_state(job_id, AgentState.SLEEPING)
    await agent.set_budget_pct(job_id, 93)
    await agent.set_wake_at(job_id, next_utc_midnight(clock.now()))
    state, pct, wake_at = await client.mget(
        [keys.state_key(job_id), keys.budget_pct_key(job_id), keys.wake_at_key(job_id)]
    )
    assert keys.parse_state(state) is AgentState.SLEEPING
    assert keys.parse_budget_pct(pct) == 93
    assert keys.parse_wake_at(wake_at) == datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("raw", [None, b"", b"sleepy", b"WORKING", b"\xff\xfe", "42"])
def test_parse_state_treats_garbage_as_absent(raw: bytes | str | None) -> None:
    assert keys.parse_state(raw) is None


def test_parse_state_accepts_every_state() -> None:
    for state in AgentState:
        assert keys.parse_state(state.value.encode()) is state
        assert keys.parse_state(state.value) is state


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"", None),
        (b"abc", None),
        (b"4.5", None),
        (b"4_2", None),
        ("٤٢".encode(), None),  # Arabic-Indic digits: int() would accept them
        (b"\xff", None),
        (b"42", 42),
        (b" 7\n", 7),
        ("0", 0),
        (b"112", 100),  # the predecessor wrote past 100 after a runaway call
        (b"-3", 0),
    ],
)
def test_parse_budget_pct(raw: bytes | str | None, expected: int | None) -> None:
    assert keys.parse_budget_pct(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"", None),
        (b"tomorrow", None),
        (b"2026-13-40T00:00:00Z", None),
        (b"\xff\xfe", None),
        (b"2026-01-02T00:00:00", None),  # no offset: which zone would it be?
        (b"2026-01-02T00:00:00Z", datetime(2026, 1, 2, tzinfo=UTC)),
        (b"2026-01-02T00:00:00+00:00", datetime(2026, 1, 2, tzinfo=UTC)),
        ("2026-01-02T02:00:00+02:00", datetime(2026, 1, 2, tzinfo=UTC)),
        (b"2026-01-02T00:00:00.250000+00:00", datetime(2026, 1, 2, 0, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_wake_at(raw: bytes | str | None, expected: datetime | None) -> None:
    parsed = keys.parse_wake_at(raw)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)
