"""The escalation feed: one numbered feed of escalation events for every owner.

Every change of an escalation (raised, resolved, withdrawn) appends its entry in the
transaction that makes the change, and the change pipeline publishes it; the entry holds
the escalation as it then stood. Watchers see only their own escalations: the owner filter
is in the SQL ``WHERE`` clause of every replay and applied to every live entry (each carries
its owner), so the feed's sequence advances past entries a watcher may not see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from cofounder_server.clock import Clock
from cofounder_server.domain.errors import NotFound
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.principal import Principal
from cofounder_server.events.escalation_events import EscalationEventEncoder, wire_escalation_event
from cofounder_server.events.feed import FeedPage, Heartbeat, check_cursor, follow
from cofounder_server.events.hub import EventBatch, EventHub, StreamPage, StreamSource, WireEvent
from cofounder_server.live import keys
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository


@dataclass(frozen=True)
class EscalationSnapshot:
    """The escalations pending when a watch opened, and the feed sequence that reflects."""

    pending: list[Escalation]
    latest_sequence: int


EscalationWatchItem = EscalationSnapshot | EventBatch | Heartbeat
"""What an escalation watch yields: one snapshot first, then event batches and heartbeats."""


class _FeedStream(StreamSource):
    """The whole feed, unfiltered: what a process's topic holds for all its watchers."""

    def __init__(self, log: EventLogRepository, encode: EscalationEventEncoder) -> None:
        self._log = log
        self._encode = encode

    async def last_sequence(self) -> int:
        return (await self._log.escalation_bounds()).last_sequence

    async def read(self, after: int, limit: int) -> StreamPage:
        page = await self._log.read_escalation_events(owner_scope=None, job_id=None, after=after, limit=limit)
        return StreamPage(
            [wire_escalation_event(e, self._encode) for e in page.events], page.bounds.last_sequence
        )


class EscalationFeed:
    """Watch the caller's part of the escalation feed."""

    def __init__(
        self,
        log: EventLogRepository,
        jobs: JobRepository,
        hub: EventHub,
        clock: Clock,
        *,
        encode: EscalationEventEncoder,
    ) -> None:
        self._log = log
        self._jobs = jobs
        self._hub = hub
        self._clock = clock
        self._encode = encode

    async def watch(
        self, principal: Principal, job_id: str | None, after: int | None
    ) -> AsyncIterator[EscalationWatchItem]:
        """The caller's escalations (one job's when ``job_id`` is set): pending ones, then events.

        ``NotFound`` when ``job_id`` names a job the caller cannot see; cursor errors and
        endings as for job watches, on the feed's own sequence. The feed never ends by itself.
        """
        scope = principal.owner_scope
        if job_id is not None and await self._jobs.get(job_id, owner_scope=scope) is None:
            raise NotFound("job", job_id)

        def visible(event: WireEvent) -> bool:
            return (scope is None or event.owner_id == scope) and (job_id is None or event.job_id == job_id)

        async def read_page(after: int, limit: int) -> FeedPage:
            page = await self._log.read_escalation_events(
                owner_scope=scope, job_id=job_id, after=after, limit=limit
            )
            events = [wire_escalation_event(e, self._encode) for e in page.events]
            return FeedPage(events, page.scanned_through, page.bounds.pruned_through)

        source = _FeedStream(self._log, self._encode)
        async with self._hub.watch(keys.ESCALATION_EVENTS_CHANNEL, source) as watcher:
            latest = watcher.topic.last
            pending = await self._log.pending_escalations(owner_scope=scope, job_id=job_id, as_of=latest)
            cursor = latest
            if after is not None:
                bounds = await self._log.escalation_bounds()
                check_cursor(
                    "after_sequence", after, bounds.pruned_through, max(latest, bounds.last_sequence)
                )
                cursor = after or bounds.pruned_through
            yield EscalationSnapshot(pending, latest)
            async for item in follow(watcher, cursor, read_page, self._clock, visible=visible):
                yield item
