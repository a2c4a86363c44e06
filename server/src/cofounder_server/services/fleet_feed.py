"""WatchJobs: the status of every job a caller's dashboard shows, then every change, in one stream.

A watch registers with the process's fleet fan-out first (so every later change reaches it),
then sends a snapshot of the jobs matching its filter in bounded pages, or, given a cursor,
the jobs that changed after it, read from SQL; then the live changes. The feed is coalesced
(see :mod:`cofounder_server.store.fleet`): a resumed or slow watcher gets each changed job
once, as it stands, in the order of its newest change. That is what a dashboard needs (the
current row of each job), bounds what a resume costs by the size of the fleet instead of
the length of an outage, and lets the feed keep every cursor valid without a log to prune.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from cofounder_server.clock import Clock
from cofounder_server.domain.budget import window_start
from cofounder_server.domain.changes import status_of
from cofounder_server.domain.errors import FieldViolation, InvalidArgument
from cofounder_server.domain.model import JobChangeKind, JobFilter, JobStatusSnapshot
from cofounder_server.domain.principal import Principal
from cofounder_server.events.feed import FeedPage, Heartbeat, interrupted
from cofounder_server.events.fleet import FleetFanOut, FleetScope
from cofounder_server.events.fleet_entries import StatusEncoder, wire_status
from cofounder_server.events.hub import EventHub, StreamPage, StreamSource, WireEvent, first_of
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.fleet import FleetJob, FleetRepository
from cofounder_server.store.ledger import LedgerRepository

PAGE_JOBS = 500
"""Most jobs in one snapshot page or change batch (a status encodes to a few hundred bytes)."""


@dataclass(frozen=True)
class FleetSnapshotPage:
    """A page of the snapshot: the statuses of matching jobs, by job id. ``last`` ends the
    snapshot; ``latest_sequence`` is the fleet sequence the stream continues after."""

    statuses: list[JobStatusSnapshot]
    last: bool
    latest_sequence: int


@dataclass(frozen=True)
class FleetChange:
    """One job's change as a watcher sees it: ``status`` is the job's status encoded for the
    wire (shared by every watcher it reaches)."""

    sequence: int
    kind: JobChangeKind
    status: bytes


@dataclass(frozen=True)
class FleetChangeBatch:
    """Changes in fleet sequence order."""

    changes: list[FleetChange]


FleetWatchItem = FleetSnapshotPage | FleetChangeBatch | Heartbeat
"""What a fleet watch yields: snapshot pages (without a cursor), then changes and heartbeats."""


@dataclass
class _View:
    """What one stream has told its client: which jobs it shows and each job's newest change
    sent, so nothing is sent twice and entering or leaving the filter is announced."""

    statuses: frozenset[str]
    resumed: bool
    floor: int = 0
    """Changes up to here were delivered (by the client's cursor) or are in the snapshot."""
    shown: set[str] = field(default_factory=set)
    sent: dict[str, int] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)

    def show(self, job_id: str, sequence: int) -> None:
        """The snapshot showed the job as of ``sequence``."""
        self.shown.add(job_id)
        self.sent[job_id] = sequence

    def change(self, entry: WireEvent) -> FleetChange | None:
        """What to send for ``entry``, if anything."""
        job_id, sequence = entry.job_id, entry.sequence
        if sequence <= max(self.floor, self.sent.get(job_id, 0)):
            return None  # the client has this state of the job, or a newer one
        self.sent[job_id] = sequence
        if not self.statuses or entry.job_status in self.statuses:
            kind = JobChangeKind.UPDATED if job_id in self.shown else JobChangeKind.ENTERED
            self.shown.add(job_id)
            self.left.discard(job_id)
            return FleetChange(sequence, kind, entry.data)
        # A resumed stream cannot know which jobs its client holds: it says once that a
        # changed job is outside the filter (the client drops it if it has it).
        if job_id in self.shown or (self.resumed and job_id not in self.left):
            self.shown.discard(job_id)
            self.left.add(job_id)
            return FleetChange(sequence, JobChangeKind.LEFT, entry.data)
        return None

    def changes(self, entries: Sequence[WireEvent]) -> list[FleetChange]:
        """What to send for ``entries``, in order."""
        return [change for entry in entries if (change := self.change(entry)) is not None]


class FleetStatuses:
    """Statuses of jobs from the durable record, encoded as fleet entries."""

    def __init__(
        self,
        fleet: FleetRepository,
        ledger: LedgerRepository,
        event_log: EventLogRepository,
        clock: Clock,
        encode: StatusEncoder,
    ) -> None:
        self._fleet = fleet
        self._ledger = ledger
        self._event_log = event_log
        self._clock = clock
        self._encode = encode

    async def statuses(self, jobs: Sequence[FleetJob]) -> list[JobStatusSnapshot]:
        """The jobs' statuses: today's spend and newest event of all of them in two reads."""
        if not jobs:
            return []
        now = self._clock.now()
        plain = [item.job for item in jobs]
        spend = await self._ledger.spend_and_progress_many(plain, window_start(now))
        latest = await self._event_log.job_last_sequences([job.job_id for job in plain])
        return [status_of(job, spend[job.job_id][0], latest[job.job_id], now) for job in plain]

    async def entries(self, jobs: Sequence[FleetJob]) -> list[WireEvent]:
        """The jobs as fleet entries, at their newest change."""
        statuses = await self.statuses(jobs)
        return [
            wire_status(item.fleet_sequence, item.job, status, self._encode)
            for item, status in zip(jobs, statuses, strict=True)
        ]

    async def changed(
        self, scope: FleetScope, after: int, through: int | None, limit: int
    ) -> tuple[list[WireEvent], int]:
        """Entries of the jobs in ``scope`` changed after ``after`` (up to ``through``), and
        how far the read looked."""
        page = await self._fleet.changed(
            owner_scope=scope.owner_id, project_id=scope.project_id, after=after, through=through, limit=limit
        )
        return await self.entries(page.jobs), page.scanned_through


class FleetStream(StreamSource):
    """The whole fleet feed from SQL: what a process's fan-out follows."""

    def __init__(self, fleet: FleetRepository, statuses: FleetStatuses) -> None:
        self._fleet = fleet
        self._statuses = statuses

    async def last_sequence(self) -> int:
        return await self._fleet.last_sequence()

    async def read(self, after: int, limit: int) -> StreamPage:
        entries, scanned = await self._statuses.changed(FleetScope(None), after, None, limit)
        return StreamPage(entries, scanned)

    async def read_page(self, after: int, limit: int) -> FeedPage:
        """The same read for the fan-out's catch-up (nothing is ever pruned)."""
        entries, scanned = await self._statuses.changed(FleetScope(None), after, None, limit)
        return FeedPage(entries, scanned, 0)


class JobFleetFeed:
    """WatchJobs: snapshot pages or the changes after a cursor, then live changes."""

    def __init__(
        self,
        fleet: FleetRepository,
        statuses: FleetStatuses,
        fan_out: FleetFanOut,
        hub: EventHub,
        clock: Clock,
    ) -> None:
        self._fleet = fleet
        self._statuses = statuses
        self._fan_out = fan_out
        self._hub = hub
        self._clock = clock

    async def watch(
        self, principal: Principal, job_filter: JobFilter, after: int | None
    ) -> AsyncIterator[FleetWatchItem]:
        """Watch the caller's jobs matching ``job_filter`` (``ListJobs``'s filter and scope).

        Without ``after``: snapshot pages, then changes after the snapshot. With ``after``:
        each job changed after that fleet sequence (``ENTERED``, ``UPDATED`` or ``LEFT``), then
        live changes. ``InvalidArgument`` for a cursor beyond the newest change; endings as
        for job watches (:mod:`cofounder_server.events.feed`), but never by slowness.
        """
        scope = FleetScope(principal.owner_scope, job_filter.project_id)
        view = _View(frozenset(status.value for status in job_filter.statuses), resumed=after is not None)
        async with self._fan_out.watch(scope) as watcher:
            start = watcher.start
            if after is None:
                async for page in self._snapshot(principal.owner_scope, job_filter, start, view):
                    yield page
                cursor = start
            else:
                newest = await self._fleet.last_sequence()
                if after > max(start, newest):
                    beyond = f"{after} is beyond the newest sequence ({max(start, newest)})"
                    raise InvalidArgument([FieldViolation("after_sequence", beyond)])
                cursor = after
                while cursor < start:
                    entries, cursor = await self._statuses.changed(scope, cursor, start, PAGE_JOBS)
                    changes = view.changes(entries)
                    if changes:
                        yield FleetChangeBatch(changes)
            view.floor = cursor
            interval = self._hub.heartbeat_interval
            due = self._clock.now() + interval
            while True:
                if self._hub.stopping.is_set():
                    raise interrupted("SERVER_SHUTTING_DOWN", "the server is shutting down", cursor)
                if self._fan_out.failure is not None:
                    raise interrupted(
                        "DEPENDENCY_UNAVAILABLE",
                        f"the fleet feed stopped: {self._fan_out.failure.message}",
                        cursor,
                    )
                entries = watcher.take(PAGE_JOBS)
                if entries:
                    cursor = max(cursor, entries[-1].sequence)
                    changes = view.changes(entries)
                    if changes:
                        yield FleetChangeBatch(changes)
                        due = self._clock.now() + interval
                    continue
                now = self._clock.now()
                if now >= due:
                    # Nothing is pending: every change up to what the process routed was sent.
                    cursor = max(cursor, self._fan_out.routed)
                    yield Heartbeat(cursor, now)
                    due = now + interval
                    continue
                watcher.wake.clear()
                await first_of(watcher.wake.wait(), self._clock.sleep_until(due))

    async def _snapshot(
        self, owner_scope: str | None, job_filter: JobFilter, start: int, view: _View
    ) -> AsyncIterator[FleetSnapshotPage]:
        after_job_id = ""
        while True:
            jobs = await self._fleet.snapshot_page(
                owner_scope=owner_scope, filter=job_filter, after_job_id=after_job_id, limit=PAGE_JOBS
            )
            for item in jobs:
                view.show(item.job.job_id, item.fleet_sequence)
            last = len(jobs) < PAGE_JOBS
            yield FleetSnapshotPage(await self._statuses.statuses(jobs), last, start)
            if last:
                return
            after_job_id = jobs[-1].job.job_id
