"""WatchJobEvents: a snapshot of the job, then every event after the cursor, then the live tail."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cofounder_server.clock import Clock
from cofounder_server.domain.model import JobStatusSnapshot
from cofounder_server.domain.principal import Principal
from cofounder_server.events.feed import FeedPage, Heartbeat, check_cursor, cursor_expired, follow
from cofounder_server.events.hub import EventBatch, EventHub, StreamPage, StreamSource
from cofounder_server.events.job_events import JobEventEncoder, wire_event
from cofounder_server.live import keys
from cofounder_server.services.status import LiveStatus
from cofounder_server.store.events import EventLogRepository

JobWatchItem = JobStatusSnapshot | EventBatch | Heartbeat
"""What a job watch yields: one snapshot first, then event batches and heartbeats."""


class _JobStream(StreamSource):
    """A job's events in SQL. Events read here may be ahead of their own fan-out, so the
    status view is brought up to them before a watcher gets them."""

    def __init__(
        self, log: EventLogRepository, status: LiveStatus, encode: JobEventEncoder, job_id: str
    ) -> None:
        self._log = log
        self._status = status
        self._encode = encode
        self._job_id = job_id

    async def last_sequence(self) -> int:
        return (await self._log.job_bounds(self._job_id)).last_sequence

    async def read(self, after: int, limit: int) -> StreamPage:
        page = await self._log.read_job_events(self._job_id, after=after, limit=limit)
        events = [wire_event(event, self._encode) for event in page.events]
        if events:
            await self._status.cover(self._job_id, events[-1].sequence)
        return StreamPage(events, page.bounds.last_sequence)

    async def read_for_watcher(self, after: int, limit: int) -> FeedPage:
        page = await self._log.read_job_events(self._job_id, after=after, limit=limit)
        if page.events and page.events[0].sequence != after + 1:
            # Retention deleted the next events after the bounds were read.
            raise cursor_expired(page.events[0].sequence - 1)
        events = [wire_event(event, self._encode) for event in page.events]
        if events:
            await self._status.cover(self._job_id, events[-1].sequence)
        scanned = events[-1].sequence if events else after
        return FeedPage(events, scanned, page.bounds.pruned_through)


class JobEventFeed:
    """WatchJobEvents: a snapshot, then every event after the cursor, then the live tail."""

    def __init__(
        self,
        log: EventLogRepository,
        status: LiveStatus,
        hub: EventHub,
        clock: Clock,
        encode: JobEventEncoder,
    ) -> None:
        self._log = log
        self._status = status
        self._hub = hub
        self._clock = clock
        self._encode = encode

    async def watch(
        self, principal: Principal, job_id: str, after: int | None
    ) -> AsyncIterator[JobWatchItem]:
        """Watch the caller's job; ``after`` None means "live events only, after the snapshot".

        The snapshot's ``latest_event_sequence`` is exactly where the events continue. Raises
        ``NotFound`` (missing or another owner's job), ``InvalidArgument`` (cursor beyond the
        newest event), ``OutOfRange`` (cursor older than the retained history), and ends
        with ``Unavailable`` as described in :mod:`.feed`.
        """
        # Taken before anything is subscribed, so it checks the owner first (a cache hit as a
        # rule). Its facts are at least as new as its event sequence, and the events continue
        # right after that sequence: those committed meanwhile reach the watcher as events.
        snapshot = await self._status.snapshot(principal, job_id)
        source = _JobStream(self._log, self._status, self._encode, job_id)
        async with self._hub.watch(keys.job_events_channel(job_id), source) as watcher:
            topic = watcher.topic
            cursor = snapshot.latest_event_sequence
            if after is not None:
                bounds = await self._log.job_bounds(job_id)
                check_cursor(
                    "after_sequence", after, bounds.pruned_through, max(topic.last, bounds.last_sequence)
                )
                cursor = after or bounds.pruned_through
            yield snapshot
            terminal = topic.terminal_sequence
            if terminal is None and snapshot.job_status.is_terminal:
                # Ended already; the topic may not have heard of it yet.
                terminal = snapshot.latest_event_sequence
            if terminal is not None and cursor >= terminal:
                return  # the job ended before this cursor: nothing more will come
            async for item in follow(
                watcher, cursor, source.read_for_watcher, self._clock, end_on_terminal=True
            ):
                yield item
