"""Parked agents: agents that wait for a time or a notification, at almost no cost.

An agent that has nothing to do until something happens (asleep until its budget window
resets, waiting for a human to resolve an escalation) *parks*: its run records the state in
SQL and ends, giving back its awake slot, its asyncio task, its conversation in memory and
any SQL connection. What stays is one small :class:`Parked` entry in this process's
:class:`ParkingLot`: the job id, the reason it waits, and when it is due (if a time wakes it).

How a parked agent wakes, whatever the reason:

* **A time** (``due``: ``wake_at``, an escalation's deadline). The lot keeps one timer for
  the whole process, armed for the earliest due entry (a heap); when it fires, every entry
  that is due leaves the lot in due order through ``on_wake``. Nothing runs per agent while
  the time has not come. With ``jitter_seconds``, each entry's due time is its time plus a
  random delay of up to that much, so agents that share a time (every budget window resets
  at UTC midnight) are spread out and leave in a random but fair order.
* **A notification** (:meth:`ParkingLot.notify`: WakeAgent on any replica, an escalation
  resolved, a ``wake_signal`` key; the executor receives them on its one control
  subscription). The entry leaves the lot at once.
* **The sweep.** A notification can be lost (Redis restarted, the subscription reconnecting).
  The executor runs one periodic sweep per process that compares what it holds with what
  changed in SQL and with the ``wake_signal`` keys, and calls :meth:`ParkingLot.notify` for
  what it finds; the lot itself does no polling.

Leaving the lot is not resuming: ``on_wake`` hands the entry to the awake-slot scheduler
(:mod:`.slots`), which resumes it (from its checkpoint, in a new run) once it may be awake
without exceeding the process's cap. A parked agent of a reason this module does not know
(a new wait) needs nothing here but a reason string and, optionally, a due time.

Memory per parked agent: the entry (a slotted object), its job id string, one dict slot and
at most one heap item: a few hundred bytes, measured in ``bench/parked.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from cofounder_server.clock import Clock
from cofounder_server.domain.model import AgentState

log = logging.getLogger(__name__)


class WakeCause(Enum):
    """Why a parked agent left the lot."""

    DUE = "due"
    """Its time came (the timer)."""
    NOTIFIED = "notified"
    """A notification or the sweep said it should wake (the wake may already be in SQL)."""


@dataclass(frozen=True)
class Park:
    """What a run that parks its agent returns: the state it parked in (already committed in
    SQL with its events), when a time wakes it (``None``: only a notification does) and the
    size of its conversation (what resuming it will cost, :mod:`.slots`)."""

    reason: AgentState
    due: datetime | None
    size: int = 0


@dataclass(slots=True)
class Parked:
    """One parked agent."""

    job_id: str
    reason: str
    """What it waits for, as the agent state it parks in (``sleeping``, ``waiting_for_input``)."""
    due: datetime | None
    """When a time wakes it (jitter included); ``None``: only a notification does."""
    order: int
    """Parking order: breaks ties between entries due at the same moment."""
    size: int = 0
    """Bytes of its conversation (what resuming it will cost)."""


class ParkingLot:
    """This process's parked agents, with one timer for all of them.

    ``on_wake`` is called (synchronously, on the event loop) with each entry that leaves the
    lot by its time or by :meth:`notify`; entries removed with :meth:`take` do not reach it.
    """

    def __init__(
        self,
        clock: Clock,
        on_wake: Callable[[Parked, WakeCause], None],
        *,
        jitter_seconds: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if jitter_seconds < 0:
            raise ValueError("jitter_seconds must not be negative")
        self._clock = clock
        self._on_wake = on_wake
        self._jitter = jitter_seconds
        self._random = rng or random.Random()
        self._entries: dict[str, Parked] = {}
        # (due, order, job_id); entries taken out leave stale items behind, skipped on pop.
        self._heap: list[tuple[datetime, int, str]] = []
        self._orders = itertools.count()
        self._rearm = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def __iter__(self) -> Iterator[Parked]:
        return iter(list(self._entries.values()))

    def get(self, job_id: str) -> Parked | None:
        """The entry of ``job_id``, if it is parked here."""
        return self._entries.get(job_id)

    def park(self, job_id: str, reason: str, due: datetime | None, size: int = 0) -> Parked:
        """Park ``job_id`` until ``due`` (plus jitter) or a notification; replaces an entry of
        the same job. An entry already due leaves the lot at the timer's next turn. ``size``:
        bytes of its conversation."""
        if due is not None and self._jitter:
            due += timedelta(seconds=self._random.uniform(0.0, self._jitter))
        entry = Parked(job_id, reason, due, next(self._orders), size)
        self._entries[job_id] = entry
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._compact()
        if due is not None:
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (due, entry.order, job_id))
            if earliest is None or due < earliest:
                self._rearm.set()
        return entry

    def take(self, job_id: str) -> Parked | None:
        """Remove ``job_id`` without waking it (cancelled, finished, taken over, stopping)."""
        return self._entries.pop(job_id, None)

    def notify(self, job_id: str) -> bool:
        """Wake ``job_id`` now if it is parked here; whether it was."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return False
        self._on_wake(entry, WakeCause.NOTIFIED)
        return True

    def next_due(self) -> datetime | None:
        """The earliest due time of a parked entry (what the timer waits for)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    # --- the one timer --------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._run_timer(), name="parking-timer")

    async def stop(self) -> None:
        """Stop the timer (the entries stay: the caller releases them)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None

    async def _run_timer(self) -> None:
        while True:
            self._rearm.clear()
            self.release_due()
            due = self.next_due()
            waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wait_rearm())}
            if due is not None:
                waits.add(asyncio.ensure_future(self._clock.sleep_until(due)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _wait_rearm(self) -> object:
        return await self._rearm.wait()

    def release_due(self) -> int:
        """Hand every entry whose time has come to ``on_wake``, earliest first; how many."""
        now = self._clock.now()
        released = 0
        while self._heap and self._heap[0][0] <= now:
            _, order, job_id = heapq.heappop(self._heap)
            entry = self._entries.get(job_id)
            if entry is None or entry.order != order:
                continue
            del self._entries[job_id]
            released += 1
            try:
                self._on_wake(entry, WakeCause.DUE)
            except Exception:  # one agent's trouble must not stop the timer for the others
                log.exception("waking parked job %s failed", job_id)
        return released

    def _compact(self) -> None:
        """Drop the items of entries taken out (so parking again and again stays bounded)."""
        self._heap = [
            item
            for item in self._heap
            if (entry := self._entries.get(item[2])) is not None and entry.order == item[1]
        ]
        heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            _, order, job_id = heap[0]
            entry = self._entries.get(job_id)
            if entry is not None and entry.order == order:
                return
            heapq.heappop(heap)
