"""Job event logs: publishing (what the executor and job service call) and watching."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from cofounder_server.clock import Clock
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.events import EventPayload, JobEvent, is_terminal
from cofounder_server.events.hub import WireEvent, pack
from cofounder_server.live import keys
from cofounder_server.live.connect import unavailable_on_error
from cofounder_server.live.tracked_cache import TrackedCache
from cofounder_server.live.versioned import LiveWrites, put_if_newer
from cofounder_server.store.events import EventLogRepository

log = logging.getLogger(__name__)

JobEventEncoder = Callable[[JobEvent], bytes]
"""Encodes an event as the API sends it (the API layer provides it; the domain stays protobuf-free)."""


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
