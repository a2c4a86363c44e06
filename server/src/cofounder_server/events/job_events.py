"""Job event logs: publishing (what the executor and job service call) and watching."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from redis.asyncio import Redis

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.model import JobStatusSnapshot
from cofounder_server.domain.principal import Principal
from cofounder_server.domain.status import LiveStatus
from cofounder_server.events.feed import FeedPage, Heartbeat, check_cursor, cursor_expired, follow
from cofounder_server.events.hub import EventBatch, EventHub, StreamPage, StreamSource, WireEvent, pack
from cofounder_server.events.model import EventPayload, JobEvent, is_terminal
from cofounder_server.live import keys
from cofounder_server.live.connect import unavailable_on_error
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.live.versioned import LiveWrites, put_if_newer
from cofounder_server.store.events import EventLogRepository

log = logging.getLogger(__name__)

JobEventEncoder = Callable[[JobEvent], bytes]
"""Encodes an event as the API sends it (the API layer provides it; the domain stays protobuf-free)."""

JobWatchItem = JobStatusSnapshot | EventBatch | Heartbeat
"""What a job watch yields: one snapshot first, then event batches and heartbeats."""


class JobEvents:
    """Publishes job events: durable and numbered in SQL first, then live on every replica."""

    def __init__(
        self,
        log: EventLogRepository,
        redis: Redis,
        cache: TrackedCache,
        clock: Clock,
        encode: JobEventEncoder,
    ) -> None:
        self._log = log
        self._redis = redis
        self._cache = cache
        self._clock = clock
        self._encode = encode

    async def publish(self, job_id: str, event: EventPayload) -> int:
        """Append ``event`` to the job's log and fan it out; return its sequence.

        Raises ``NotFound`` for a missing job and ``Unavailable`` when SQL cannot be reached
        (then nothing was stored). Once SQL has committed, the event counts as published:
        if Redis fails, watchers still get it (from SQL, on the next event or heartbeat).
        """
        (sequence,) = await self.publish_many(job_id, (event,))
        return sequence

    async def publish_many(self, job_id: str, events: Sequence[EventPayload]) -> list[int]:
        """Append several events in one transaction (consecutive sequences); as :meth:`publish`."""
        stored = await self._log.append_job_events(job_id, events, now=self._clock.now())
        observability.metrics.events_appended.inc(len(stored))
        try:
            await self._fan_out(job_id, stored)
        except Unavailable as error:
            log.warning(
                "events %d-%d of job %s are stored but not fanned out: %s",
                stored[0].sequence,
                stored[-1].sequence,
                job_id,
                error,
            )
        return [event.sequence for event in stored]

    async def announce(
        self,
        stored: Sequence[JobEvent],
        *,
        also: Callable[[LiveWrites], None] | None = None,
        invalidate: Sequence[str] = (),
    ) -> None:
        """Fan out events that the caller's own transaction committed (see
        ``EventLogRepository.append_job_events_in``), of any number of jobs, in one Redis
        round trip; ``also`` may add more live-key writes (run with the ``last_seq`` writes as
        one command), and ``invalidate`` names keys they write, dropped from this process's
        cache afterwards.

        Never raises for Redis trouble: the events are stored, so watchers still get them
        (from SQL, on the next event or heartbeat); the failure is logged.
        """
        observability.metrics.events_appended.inc(len(stored))
        if not stored and also is None:
            return
        newest: dict[str, int] = {}
        try:
            with unavailable_on_error("publish events"):
                async with self._redis.pipeline(transaction=False) as pipe:
                    by_job: dict[str, list[WireEvent]] = {}
                    for event in stored:
                        by_job.setdefault(event.job_id, []).append(wire_event(event, self._encode))
                    for job_id, events in by_job.items():
                        pipe.publish(keys.job_events_channel(job_id), pack(events))
                        newest[job_id] = max(newest.get(job_id, 0), events[-1].sequence)
                    writes = LiveWrites()
                    for job_id, sequence in newest.items():
                        writes.put_if_newer(
                            keys.last_sequence_key(job_id), sequence, "", keys.SUMMARY_TTL_SECONDS
                        )
                    if also is not None:
                        also(writes)
                    writes.queue(pipe)
                    await pipe.execute()
        except Unavailable as error:
            log.warning("%d stored events are not fanned out: %s", len(stored), error)
        finally:
            self._cache.invalidate([keys.last_sequence_key(job_id) for job_id in newest])
            self._cache.invalidate(invalidate)

    async def _fan_out(self, job_id: str, stored: list[JobEvent]) -> None:
        channel = keys.job_events_channel(job_id)
        with unavailable_on_error("publish events"):
            await self._redis.publish(channel, pack([wire_event(event, self._encode) for event in stored]))
        key = keys.last_sequence_key(job_id)
        await put_if_newer(self._redis, key, stored[-1].sequence, "", keys.SUMMARY_TTL_SECONDS)
        # Redis's invalidation of our own write may arrive after our next read.
        self._cache.invalidate((key,))


def wire_event(event: JobEvent, encode: JobEventEncoder) -> WireEvent:
    """The fan-out form of a job event."""
    return WireEvent(event.sequence, encode(event), terminal=is_terminal(event.payload), job_id=event.job_id)


class _JobStream(StreamSource):
    def __init__(self, log: EventLogRepository, encode: JobEventEncoder, job_id: str) -> None:
        self._log = log
        self._encode = encode
        self._job_id = job_id

    async def last_sequence(self) -> int:
        return (await self._log.job_bounds(self._job_id)).last_sequence

    async def read(self, after: int, limit: int) -> StreamPage:
        page = await self._log.read_job_events(self._job_id, after=after, limit=limit)
        events = [wire_event(event, self._encode) for event in page.events]
        return StreamPage(events, page.bounds.last_sequence)

    async def read_for_watcher(self, after: int, limit: int) -> FeedPage:
        page = await self._log.read_job_events(self._job_id, after=after, limit=limit)
        if page.events and page.events[0].sequence != after + 1:
            # Retention deleted the next events after the bounds were read.
            raise cursor_expired(page.events[0].sequence - 1)
        events = [wire_event(event, self._encode) for event in page.events]
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
        # Checks the owner before anything is subscribed; a cache hit as a rule.
        await self._status.snapshot(principal, job_id)
        source = _JobStream(self._log, self._encode, job_id)
        async with self._hub.watch(keys.job_events_channel(job_id), source) as watcher:
            topic = watcher.topic
            # Read before the snapshot's facts, so they are at least as new as it says.
            latest = topic.last
            snapshot = await self._status.snapshot(principal, job_id)
            cursor = latest
            if after is not None:
                bounds = await self._log.job_bounds(job_id)
                check_cursor(
                    "after_sequence", after, bounds.pruned_through, max(latest, bounds.last_sequence)
                )
                cursor = after or bounds.pruned_through
            yield dataclasses.replace(snapshot, latest_event_sequence=latest)
            if topic.terminal_sequence is not None and cursor >= topic.terminal_sequence:
                return  # the job ended before this cursor: nothing more will come
            async for item in follow(
                watcher, cursor, source.read_for_watcher, self._clock, end_on_terminal=True
            ):
                yield item
