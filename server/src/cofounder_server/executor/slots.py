"""Awake agents within a memory budget, and a fair line for the ones that wake together.

An awake agent costs memory: its run and task, its conversation, and while it waits on a
model call the request the SDK built from that conversation and the connection it is sent
on. A waiting agent costs nothing else (no thread, no CPU), so what bounds how many agents
one process keeps awake is memory, not a count. Each awake run holds a *charge*: an
estimate of its memory, :func:`charge_of` its conversation's size, kept up to date as the
conversation grows. Agents are admitted while the charges fit the process's budget
(``awake_memory_mib``); an optional count cap (``max_running_jobs``) applies on top. One agent
is always admitted when none is awake, however large its conversation.

Parked agents that leave the lot (:mod:`.parking`) do not resume on their own: they
:meth:`AwakeSlots.request` admission and wait in line, and each charge given back goes to the
head of the line at once. The line has two lanes: agents an operator woke (WakeAgent, a
resolved escalation: someone is waiting for them) go first, then agents whose time came, in
the order the parking lot released them (due time, then the order they parked in). The head
of the line is never overtaken: when thousands of budget windows reset at the same instant,
they resume in order as memory allows.

New work (a queued job, a running job taken over from another replica) is admitted only
while nobody waits in line (:meth:`AwakeSlots.try_take`): agents that were already running
before the storm are not starved by new submissions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cofounder_server.executor.parking import Parked, WakeCause

AGENT_BASE_BYTES = 64 * 1024
"""What an awake agent with a short conversation costs while it waits on a model call: its
run, task, SDK request and response objects and connection state (measured: ~56 KiB per
agent between 200 and 2,000 agents in flight, bench/README.md)."""
CONVERSATION_FACTOR = 2.5
"""Bytes of memory per byte of conversation: the messages themselves (~1.5: measured 3.5 MiB
per awake agent holding 150 iterations of 16 KB tool results, bench/README.md), and the
provider's request built from them while a call is in flight (~1)."""
NEW_WORK_PER_ROUND = 1000
"""Queued jobs admitted per claim round at most (the claim is one transaction)."""


def charge_of(conversation_bytes: int) -> int:
    """The estimated memory of an awake agent whose conversation holds ``conversation_bytes``."""
    return AGENT_BASE_BYTES + int(CONVERSATION_FACTOR * max(0, conversation_bytes))


@dataclass(frozen=True, slots=True)
class Waiting:
    """A parked agent waiting in line to be admitted."""

    entry: Parked
    cause: WakeCause


class AwakeSlots:
    """Admits awake agents within a memory budget and hands freed room to the line in order.

    ``resume`` is called (synchronously) with each waiting agent admitted; its charge is then
    held until :meth:`give_back`.
    """

    def __init__(self, budget_bytes: int, resume: Callable[[Waiting], None], *, max_count: int = 0) -> None:
        """``max_count``: at most this many awake at once (0: no count cap)."""
        if budget_bytes < 1:
            raise ValueError("budget_bytes must be positive")
        if max_count < 0:
            raise ValueError("max_count must not be negative")
        self.budget = budget_bytes
        self.max_count = max_count
        self._resume = resume
        self._charges: dict[str, int] = {}
        self.used = 0
        """Bytes charged to awake agents."""
        self.peak = 0
        """The most agents ever awake at once."""
        self._notified: deque[Waiting] = deque()
        self._due: deque[Waiting] = deque()
        self._queued: dict[str, int] = {}
        """Job id -> parking order of the item in line (an item not matching was withdrawn)."""

    @property
    def awake(self) -> int:
        """Agents admitted and not given back."""
        return len(self._charges)

    @property
    def waiting(self) -> int:
        """Agents in line."""
        return len(self._queued)

    @property
    def free(self) -> int:
        """How many new agents with a short conversation may be admitted now (none while
        agents wait in line)."""
        if self._queued:
            return 0
        room = max(0, self.budget - self.used) // AGENT_BASE_BYTES
        if not self._charges:
            room = max(room, 1)
        if self.max_count:
            room = min(room, self.max_count - self.awake)
        return max(0, min(room, NEW_WORK_PER_ROUND))

    def try_take(self, job_id: str) -> bool:
        """Admit new work (a short conversation) if it fits and nobody waits in line."""
        if self._queued or not self._fits(AGENT_BASE_BYTES):
            return False
        self._take(job_id, AGENT_BASE_BYTES)
        return True

    def admit(self, job_id: str) -> None:
        """Admit new work claimed within :attr:`free` (a short conversation), even if agents
        resumed while the claim was committed took some of that room meanwhile."""
        self._take(job_id, AGENT_BASE_BYTES)

    def charge(self, job_id: str, conversation_bytes: int) -> None:
        """An awake agent's conversation is now this large: its charge follows (admissions
        after it see the memory it holds)."""
        old = self._charges.get(job_id)
        if old is not None:
            new = charge_of(conversation_bytes)
            self._charges[job_id] = new
            self.used += new - old

    def request(self, entry: Parked, cause: WakeCause) -> None:
        """Get in line (admitted at once when there is room and nobody is ahead)."""
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

    def give_back(self, job_id: str) -> None:
        """An awake agent's run ended or parked: its room goes to the head of the line."""
        charge = self._charges.pop(job_id, None)
        if charge is None:
            raise RuntimeError(f"room was given back for {job_id}, which was not admitted")
        self.used -= charge
        self._grant()

    def _fits(self, charge: int) -> bool:
        if self.max_count and self.awake >= self.max_count:
            return False
        return not self._charges or self.used + charge <= self.budget

    def _take(self, job_id: str, charge: int) -> None:
        if job_id in self._charges:
            raise RuntimeError(f"{job_id} was admitted twice")
        self._charges[job_id] = charge
        self.used += charge
        self.peak = max(self.peak, self.awake)

    def _grant(self) -> None:
        while (waiting := self._head()) is not None:
            charge = charge_of(waiting.entry.size)
            if not self._fits(charge):
                return
            self._pop()
            self._take(waiting.entry.job_id, charge)
            self._resume(waiting)

    def _head(self) -> Waiting | None:
        """The first item in line still wanted (withdrawn ones are dropped on the way)."""
        for lane in (self._notified, self._due):
            while lane:
                waiting = lane[0]
                if self._queued.get(waiting.entry.job_id) == waiting.entry.order:
                    return waiting
                lane.popleft()
        return None

    def _pop(self) -> None:
        lane = self._notified if self._notified else self._due
        waiting = lane.popleft()
        del self._queued[waiting.entry.job_id]
