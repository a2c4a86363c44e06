"""Awake slots: at most ``capacity`` agents of this process are awake at once, and agents
that wake together (the midnight storm) take turns in a fair order.

A slot is taken by every awake run: a job claimed to run, or a parked agent resuming. It is
given back when the run ends or parks. Parked agents that leave the lot (:mod:`.parking`)
do not resume on their own: they :meth:`AwakeSlots.request` a slot and wait in line, and
each slot given back goes to the head of the line at once. The line has two lanes: agents an
operator woke (WakeAgent, a resolved escalation: someone is waiting for them) go first, then
agents whose time came, in the order the parking lot released them (due time, then the
order they parked in). So when thousands of budget windows reset at the same instant, the
first ``capacity`` resume at once, and every other one resumes as soon as a slot frees, in
order, never more than ``capacity`` awake.

New work (a queued job, a running job taken over from another replica) only takes a slot
that nobody in line is waiting for (:meth:`AwakeSlots.try_take`): agents that were already
running before the storm are not starved by new submissions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cofounder_server.executor.parking import Parked, WakeCause


@dataclass(frozen=True, slots=True)
class Waiting:
    """A parked agent waiting in line for a slot."""

    entry: Parked
    cause: WakeCause


class AwakeSlots:
    """Counts awake agents against ``capacity`` and hands freed slots to the line in order.

    ``resume`` is called (synchronously) with each waiting agent that got a slot; the slot is
    then held for it until :meth:`give_back`.
    """

    def __init__(self, capacity: int, resume: Callable[[Waiting], None]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._resume = resume
        self.awake = 0
        self.peak = 0
        """The most slots ever taken at once (never above ``capacity``)."""
        self._notified: deque[Waiting] = deque()
        self._due: deque[Waiting] = deque()
        self._queued: dict[str, int] = {}
        """Job id -> parking order of the item in line (an item not matching was withdrawn)."""

    @property
    def waiting(self) -> int:
        """Agents in line."""
        return len(self._queued)

    @property
    def free(self) -> int:
        """Slots new work may take now (none while agents wait in line)."""
        return 0 if self._queued else self.capacity - self.awake

    def try_take(self) -> bool:
        """Take a slot for new work if one is free and nobody waits in line."""
        if self.free <= 0:
            return False
        self._take()
        return True

    def request(self, entry: Parked, cause: WakeCause) -> None:
        """Get in line for a slot (resumed at once when one is free)."""
        waiting = Waiting(entry, cause)
        self._queued[entry.job_id] = entry.order
        (self._notified if cause is WakeCause.NOTIFIED else self._due).append(waiting)
        self._grant()

    def withdraw(self, job_id: str) -> bool:
        """Leave the line (the job was cancelled or taken over); whether it was in line."""
        return self._queued.pop(job_id, None) is not None

    def is_waiting(self, job_id: str) -> bool:
        """Whether ``job_id`` waits in line."""
        return job_id in self._queued

    def give_back(self) -> None:
        """An awake run ended or parked: its slot goes to the head of the line."""
        if self.awake <= 0:
            raise RuntimeError("a slot was given back that was never taken")
        self.awake -= 1
        self._grant()

    def _take(self) -> None:
        self.awake += 1
        self.peak = max(self.peak, self.awake)

    def _grant(self) -> None:
        while self.awake < self.capacity and (waiting := self._next()) is not None:
            self._take()
            self._resume(waiting)

    def _next(self) -> Waiting | None:
        for lane in (self._notified, self._due):
            while lane:
                waiting = lane.popleft()
                if self._queued.get(waiting.entry.job_id) == waiting.entry.order:
                    del self._queued[waiting.entry.job_id]
                    return waiting
        return None
