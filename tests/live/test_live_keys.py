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
from cofounder_server.live.client import LiveClient
from cofounder_server.live.versioned import LiveWrites

from .support import Engine

START = datetime(2026, 1, 1, 23, 0, 0, tzinfo=UTC)


def test_key_names() -> None:
    assert keys.state_key("j1") == "cofounder:agent:j1:state"
    assert keys.budget_pct_key("j1") == "cofounder:agent:j1:budget_pct"
    assert keys.wake_at_key("j1") == "cofounder:agent:j1:wake_at"
    assert keys.wake_signal_key("j1") == "cofounder:agent:j1:wake_signal"
    assert keys.summary_key("j1") == "cofounder:job:j1:summary"
    assert keys.EXECUTOR_CONTROL_CHANNEL == "cofounder:executor:control"
    for name in (keys.state_key("j1"), keys.summary_key("j1")):
        assert name.startswith(keys.KEY_PREFIX)
    with pytest.raises(ValueError, match="empty"):
        keys.state_key("")


async def _write(
    client: Redis,
    job_id: str,
    *,
    state: AgentState | None = None,
    wake_at: datetime | None = None,
    pct: int | None = None,
    now: datetime = START,
    version: int = 1,
) -> None:
    """Write the agent's keys as the change pipeline does: after the job's versioned summary."""
    writes = LiveWrites()
    writes.put_if_newer(keys.summary_key(job_id), version, "{}", 600)
    if state is not None:
        keys.queue_agent_state(writes, job_id, state, wake_at, now)
    if pct is not None:
        keys.queue_budget_pct(writes, job_id, pct)
    async with client.pipeline(transaction=False) as pipe:
        writes.queue(pipe)
        await pipe.execute()


@pytest.mark.parametrize("state", list(AgentState))
async def test_state_value_and_ttl(engine: Engine, client: Redis, job_id: str, state: AgentState) -> None:
    await _write(client, job_id, state=state)
    assert await client.get(f"cofounder:agent:{job_id}:state") == state.value.encode()
    assert 89_990 <= await client.ttl(f"cofounder:agent:{job_id}:state") <= 90_000


@pytest.mark.parametrize(
    ("written", "stored"), [(42, b"42"), (0, b"0"), (100, b"100"), (137, b"100"), (-5, b"0")]
)
async def test_budget_pct_is_clamped_with_a_short_ttl(
    engine: Engine, client: Redis, job_id: str, written: int, stored: bytes
) -> None:
    await _write(client, job_id, pct=written)
    assert await client.get(f"cofounder:agent:{job_id}:budget_pct") == stored
    assert 85 <= await client.ttl(f"cofounder:agent:{job_id}:budget_pct") <= 90


async def test_wake_at_lives_until_the_wake_time_by_the_injected_clock(
    engine: Engine, client: Redis, job_id: str
) -> None:
    clock = ManualClock(START)
    key = f"cofounder:agent:{job_id}:wake_at"
    sleeping = AgentState.SLEEPING

    await _write(client, job_id, state=sleeping, wake_at=next_utc_midnight(clock.now()), now=clock.now())
    assert await client.get(key) == b"2026-01-02T00:00:00+00:00"
    assert 3590 <= await client.ttl(key) <= 3600

    # A partial second rounds up: the key must not vanish before the agent wakes.
    soon = clock.now() + timedelta(seconds=7, milliseconds=200)
    await _write(client, job_id, state=sleeping, wake_at=soon, now=clock.now(), version=2)
    assert await client.get(key) == b"2026-01-01T23:00:07.200000+00:00"
    assert 7 <= await client.ttl(key) <= 8

    # The wake time is given in another zone; the value is still UTC.
    await clock.advance(timedelta(minutes=30))
    elsewhere = datetime(2026, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    await _write(client, job_id, state=sleeping, wake_at=elsewhere, now=clock.now(), version=3)
    assert await client.get(key) == b"2026-01-02T00:00:00+00:00"
    assert 1790 <= await client.ttl(key) <= 1800

    # Awake: the wake time goes.
    await _write(client, job_id, state=AgentState.WORKING, now=clock.now(), version=4)
    assert await client.exists(key) == 0


async def test_wake_at_that_has_passed_is_not_written(engine: Engine, client: Redis, job_id: str) -> None:
    await _write(client, job_id, state=AgentState.SLEEPING, wake_at=START - timedelta(hours=1))
    assert await client.exists(f"cofounder:agent:{job_id}:wake_at") == 0
    assert keys.wake_at_ttl(START + timedelta(milliseconds=1), START) == 1


def test_wake_at_must_be_timezone_aware(job_id: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        keys.format_wake_at(datetime(2026, 1, 2))


async def test_an_agent_off_the_job_has_no_state_keys(engine: Engine, client: Redis, job_id: str) -> None:
    await _write(client, job_id, state=AgentState.SLEEPING, wake_at=START + timedelta(hours=1))
    writes = LiveWrites()
    writes.put_if_newer(keys.summary_key(job_id), 2, "{}", 600)
    keys.queue_agent_state(writes, job_id, None, None, START)
    async with client.pipeline(transaction=False) as pipe:
        writes.queue(pipe)
        await pipe.execute()
    assert await client.exists(keys.state_key(job_id), keys.wake_at_key(job_id)) == 0


async def test_keys_of_an_older_change_never_overwrite_a_newer_ones(
    engine: Engine, client: Redis, job_id: str
) -> None:
    await _write(client, job_id, state=AgentState.SLEEPING, pct=91, version=5)
    await _write(client, job_id, state=AgentState.WORKING, pct=12, version=4)
    assert await client.mget([keys.state_key(job_id), keys.budget_pct_key(job_id)]) == [b"sleeping", b"91"]
    # The same version again (a repair from SQL) rewrites them.
    await _write(client, job_id, state=AgentState.SLEEPING, pct=93, version=5)
    assert await client.get(keys.budget_pct_key(job_id)) == b"93"
    await _write(client, job_id, state=AgentState.WORKING, pct=20, version=6)
    assert await client.mget([keys.state_key(job_id), keys.budget_pct_key(job_id)]) == [b"working", b"20"]


async def test_a_wake_signal_is_seen_then_taken_once(engine: Engine, client: Redis, job_id: str) -> None:
    live = LiveClient(engine.url)
    try:
        assert await live.pending_wake_signals([job_id]) == []
        assert await live.take_wake_signal(job_id) is False
        # Writers outside this server set it.
        await client.set(f"cofounder:agent:{job_id}:wake_signal", "1", ex=keys.WAKE_SIGNAL_TTL_SECONDS)
        assert await live.pending_wake_signals([f"{job_id}-other", job_id]) == [job_id]
        assert await live.take_wake_signal(job_id) is True
        assert await live.take_wake_signal(job_id) is False
        assert await live.pending_wake_signals([job_id]) == []
    finally:
        await live.aclose()


async def test_live_round_trips_raise_unavailable_when_redis_is_down(tmp_path: Path) -> None:
    live = LiveClient(f"unix://{tmp_path}/nothing.sock")
    try:
        with pytest.raises(Unavailable):
            await live.take_wake_signal("j1")
        with pytest.raises(Unavailable):
            await live.pending_wake_signals(["j1"])
        with pytest.raises(Unavailable):
            await live.ping()
    finally:
        await live.aclose()


async def test_values_read_back_through_the_parsers(engine: Engine, client: Redis, job_id: str) -> None:
    await _write(
        client, job_id, state=AgentState.SLEEPING, wake_at=next_utc_midnight(START), pct=93, now=START
    )
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
