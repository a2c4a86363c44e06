"""A run's budget: today's spend against today's budget, and sleeping until the window resets.

The budget window is the UTC day by the injected clock. A run knows the window it works in
and that window's spend (from its start, then from its own model calls); when midnight
passes it reads the new window's spend again. At 90 % of the budget the agent finishes its
turn and sleeps until the window resets: its run records ``sleeping`` (with the wake time
and the ``agent.sleeping`` event) and ends; past 110 % (a runaway call) the job fails.
"""

from __future__ import annotations

from datetime import datetime

from cofounder_server.clock import Clock, next_utc_midnight
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Spend
from cofounder_server.domain.events import AgentSleeping, SleepReason
from cofounder_server.domain.model import AgentState
from cofounder_server.executor.parking import Park
from cofounder_server.executor.run_store import Pause, RunStore
from cofounder_server.store.iterations import Parking


class BudgetWindow:
    """Today's spend of one run and today's budget (the daily budget plus today's top-ups)."""

    def __init__(self, store: RunStore, clock: Clock, window: datetime, spend: Spend) -> None:
        self._store = store
        self._clock = clock
        self.window = window
        self.spend = spend
        store.knows_spend(window, spend)

    async def current(self, now: datetime) -> Spend:
        """The spend of the window ``now`` is in (read again once midnight has passed)."""
        window = budget.window_start(now)
        if window != self.window:
            self.window = window
            self.spend = await self._store.spend(window)
            self._store.knows_spend(window, self.spend)
        return self.spend

    def charge(self, cost: int) -> Spend:
        """Add a model call's cost to today's spend."""
        self.spend = Spend(self.spend.spent + cost, self.spend.budget)
        self._store.knows_spend(self.window, self.spend)
        return self.spend

    @property
    def should_sleep(self) -> bool:
        """At or past 90 % of today's budget."""
        return budget.should_sleep(self.spend.spent, self.spend.budget)

    @property
    def exceeded(self) -> bool:
        """Past 110 % of today's budget."""
        return budget.exceeded(self.spend.spent, self.spend.budget)

    @property
    def percent(self) -> int:
        """Today's spend as a whole percentage of today's budget (not clamped)."""
        return budget.percent(self.spend.spent, self.spend.budget)


def sleep_until_midnight(now: datetime) -> tuple[Parking, AgentSleeping, Park]:
    """Sleeping until the budget window resets: the transition to record, its event, and
    what the run returns once it is recorded."""
    wake_at = next_utc_midnight(now)
    return (
        Parking(AgentState.SLEEPING, wake_at),
        AgentSleeping(wake_time=wake_at, reason=SleepReason.BUDGET_THRESHOLD),
        Park(AgentState.SLEEPING, wake_at),
    )


async def park_until_midnight(store: RunStore, clock: Clock, pause: Pause) -> Park:
    """Record the sleep until the budget window resets on its own (no iteration to ride with:
    woken without a top-up before the window reset); the run then ends."""
    parking, event, park = sleep_until_midnight(clock.now())
    await store.set_agent_state(parking.agent_state, parking.wake_at, [event], pause)
    return park
