"""The injected clock: manual time wakes sleepers as it passes their deadline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from cofounder_server.clock import ManualClock, next_utc_midnight


async def test_sleepers_wake_when_time_passes_their_deadline() -> None:
    clock = ManualClock(datetime(2026, 5, 1, 23, 0, tzinfo=UTC))
    midnight = next_utc_midnight(clock.now())
    sleeper = asyncio.create_task(clock.sleep_until(midnight))

    await clock.advance(timedelta(minutes=59))
    await asyncio.sleep(0)
    assert not sleeper.done()

    await clock.advance(timedelta(minutes=1))
    await asyncio.wait_for(sleeper, 5)
    assert clock.now() == datetime(2026, 5, 2, tzinfo=UTC)


async def test_manual_clock_refuses_to_go_backwards() -> None:
    clock = ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="backwards"):
        await clock.set(datetime(2026, 4, 1, tzinfo=UTC))


def test_next_midnight_is_the_start_of_the_next_utc_day() -> None:
    assert next_utc_midnight(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert next_utc_midnight(datetime(2026, 6, 1, 0, 0, tzinfo=UTC)) == datetime(2026, 6, 2, tzinfo=UTC)
