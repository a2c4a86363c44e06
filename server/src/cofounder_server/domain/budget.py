"""Budget arithmetic: the UTC-day budget window and the sleep/stop thresholds.

The window is the UTC day by the injected clock; spend in a window is the sum of its ledger
rows, and the budget of a window is the job's daily budget plus the window's top-ups.
"""

from __future__ import annotations

from datetime import UTC, datetime

SLEEP_AT_PERCENT = 90
"""At this share of the window's budget the agent finishes its turn and sleeps."""
STOP_ABOVE_PERCENT = 110
"""Past this share (a runaway call) the agent stops at once: the job fails BUDGET_EXCEEDED."""


def window_start(now: datetime) -> datetime:
    """The UTC midnight that opened the budget window ``now`` is in."""
    day = now.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def percent(spent: int, budget: int) -> int:
    """``spent`` as a whole percentage of ``budget`` (not clamped)."""
    return spent * 100 // max(1, budget)


def shown_percent(spent: int, budget: int) -> int:
    """``spent`` as dashboards show it (the ``budget_pct`` key, status calls): 0..100."""
    return min(100, max(0, percent(spent, budget)))


def should_sleep(spent: int, budget: int) -> bool:
    """At or past 90 %."""
    return spent * 100 >= SLEEP_AT_PERCENT * max(1, budget)


def exceeded(spent: int, budget: int) -> bool:
    """Past 110 %."""
    return spent * 100 > STOP_ABOVE_PERCENT * max(1, budget)
