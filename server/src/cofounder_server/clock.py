"""Time as an injected dependency, so midnight and TTL logic is testable without waiting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of wall-clock time for domain decisions (budget windows, wake times)."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once ``now() >= when``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        # Wall time can be stepped while we sleep on the loop's monotonic clock: re-check.
        while (remaining := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


class ManualClock:
    """A clock that moves only when told to; sleepers wake as it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._changed = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= when)

    async def advance(self, delta: timedelta) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        await self.set(self._now + delta)

    async def set(self, when: datetime) -> None:
        """Jump to ``when`` (never backwards)."""
        if when < self._now:
            raise ValueError("ManualClock cannot go backwards")
        async with self._changed:
            self._now = when
            self._changed.notify_all()


def next_utc_midnight(now: datetime) -> datetime:
    """The start of the next UTC day after ``now``: when the daily budget window resets."""
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
