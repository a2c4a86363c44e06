"""Process-wide live fan-out: one Redis pub/sub connection, one subscription per stream.

Every replica publishes an event on its stream's channel after committing it to SQL. Here,
each channel that has watchers in this process is subscribed once on a single dedicated
connection, whatever the number of watchers. A :class:`Topic` keeps the stream's newest
events, already encoded for the wire, in a bounded ring that all its watchers read from:
an event costs one copy per process, not one per watcher, and a watcher's backlog is a
slice of the ring, sent as one message.

The ring is gap-free. Pub/sub can lose messages (a reconnect, a publisher that died between
commit and PUBLISH) and deliver them out of order (two replicas' publishes race), so a topic
that sees sequence N+2 after N, or whose connection comes back, reads the missing events
from SQL before anything later reaches a watcher; an idle topic also re-checks SQL before a
heartbeat says "nothing up to here was skipped".

Heartbeats: one scheduler task for the process marks watchers that sent nothing for the
heartbeat interval, by the injected clock, so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cofounder_server import jsontext
from cofounder_server.clock import Clock
from cofounder_server.domain.errors import Unavailable
from cofounder_server.live.subscriber import Subscriber

log = logging.getLogger(__name__)

HUB_CLIENT_NAME = "cofounder-event-hub"
"""Redis ``CLIENT SETNAME`` of the hub's pub/sub connection."""

PREFILL_EVENTS = 256
"""Newest events a new topic loads from SQL, so reconnecting watchers resume from memory."""

_BATCH_CACHE_ENTRIES = 64


@dataclass(frozen=True, slots=True)
class WireEvent:
    """An event as the API sends it (``data``), with what fan-out needs to route it."""

    sequence: int
    data: bytes
    terminal: bool = False
    owner_id: str = ""
    job_id: str = ""
    project_id: str = ""
    job_status: str = ""
    """The job's project and status after the change (fleet feed entries, routed by them)."""


def pack(events: Sequence[WireEvent]) -> bytes:
    """One pub/sub message for ``events`` (consecutive events of one stream, so a replica
    publishes a job's share of a group commit at once): a JSON header line with each event's
    ``[sequence, terminal, owner_id, job_id, length]`` (and ``project_id, job_status`` when
    set), then the encoded events back to back."""
    header = jsontext.dumps([_header(event) for event in events])
    return header.encode() + b"\n" + b"".join(event.data for event in events)


def _header(event: WireEvent) -> list[object]:
    entry: list[object] = [event.sequence, event.terminal, event.owner_id, event.job_id, len(event.data)]
    if event.project_id or event.job_status:
        entry += (event.project_id, event.job_status)
    return entry


def unpack(message: bytes) -> list[WireEvent]:
    """The events in a pub/sub message; empty when it is malformed."""
    header, separator, data = message.partition(b"\n")
    if not separator:
        return []
    try:
        entries = json.loads(header)
        if not isinstance(entries, list):
            return []
        events: list[WireEvent] = []
        offset = 0
        for sequence, terminal, owner_id, job_id, length, *route in entries:
            end = offset + int(length)
            if end > len(data) or len(route) not in (0, 2):
                return []
            project_id, job_status = route or ("", "")
            events.append(
                WireEvent(
                    int(sequence),
                    data[offset:end],
                    bool(terminal),
                    str(owner_id),
                    str(job_id),
                    str(project_id),
                    str(job_status),
                )
            )
            offset = end
    except (ValueError, TypeError):
        return []
    return events if offset == len(data) else []


@dataclass(frozen=True)
class StreamPage:
    """Consecutive events of a stream read from SQL (all of them, unfiltered)."""

    events: list[WireEvent]
    last_sequence: int


class StreamSource:
    """How a topic reads its stream from SQL. Subclasses implement both methods."""

    async def last_sequence(self) -> int:
        """The newest sequence in SQL."""
        raise NotImplementedError

    async def read(self, after: int, limit: int) -> StreamPage:
        """Up to ``limit`` consecutive events after ``after``."""
        raise NotImplementedError


@dataclass(eq=False)
class EventBatch:
    """Consecutive events sent to a watcher as one message.

    Watchers at the same position share one object, so the API encodes it once
    (``encoded`` is its memo of the wire message).
    """

    events: tuple[WireEvent, ...]
    terminal: bool
    encoded: object | None = None
    made_at: datetime | None = None
    """When the topic built it for the first watcher to ask. The others send it within a round
    of sends and count it as sent then: one clock reading per batch, not one per watcher."""

    @classmethod
    def of(cls, events: tuple[WireEvent, ...], made_at: datetime | None = None) -> EventBatch:
        """A batch of ``events``."""
        return cls(events, any(event.terminal for event in events), made_at=made_at)


@dataclass(eq=False)
class Watcher:
    """One open stream's registration with the hub."""

    topic: Topic
    due: datetime
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat_due: bool = False

    async def wait(self) -> None:
        """Until new events, a heartbeat or shutdown may need attention."""
        if not self.wake.is_set():
            # New events wake only the watchers that wait: the others look for them before
            # they wait, so thousands of busy watchers cost an event nothing.
            self.topic.waiting.add(self)
            try:
                await self.wake.wait()
            finally:
                self.topic.waiting.discard(self)
        self.wake.clear()

    def sent(self, now: datetime) -> None:
        """The stream just sent a message: the next heartbeat is due an interval from ``now``."""
        self.due = now + self.topic.heartbeat_interval
        self.heartbeat_due = False


class Topic:
    """The live state of one stream in this process: its channel, ring and watchers."""

    def __init__(self, hub: EventHub, channel: str, source: StreamSource) -> None:
        self.channel = channel
        self._hub = hub
        self._source = source
        self._ring: list[WireEvent] = []
        self.last = 0
        """Every event up to this sequence is known (in the ring, or older than it)."""
        self.terminal_sequence: int | None = None
        """The sequence of the stream's terminal event, once known."""
        self.watchers: set[Watcher] = set()
        self.waiting: set[Watcher] = set()
        """The watchers blocked in :meth:`Watcher.wait`."""
        self.references = 0
        self.subscribed = asyncio.Event()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending: dict[int, WireEvent] = {}
        self._catch_up_lock = asyncio.Lock()
        self._catch_up_task: asyncio.Task[None] | None = None
        self._last_resync: datetime | None = None
        self._batches: OrderedDict[tuple[int, int], EventBatch] = OrderedDict()

    async def initialize(self, subscribe_seconds: float) -> None:
        """Wait for the subscription (at most ``subscribe_seconds``), then load the newest events."""
        try:
            async with asyncio.timeout(subscribe_seconds):
                await self.subscribed.wait()
        except TimeoutError:
            raise Unavailable("Redis is unavailable (event subscription)") from None
        last = await self._source.last_sequence()
        prefill = min(PREFILL_EVENTS, self._hub.ring_capacity)
        page = await self._source.read(max(0, last - prefill), prefill)
        self.last = page.events[0].sequence - 1 if page.events else last
        self._append_all(page.events)
        # Events published since the subscription started are either in that read or newer.
        self._drain()

    def offer(self, event: WireEvent) -> None:
        """An event from pub/sub: append it in order, or hold it until the gap before it is filled."""
        if event.sequence <= self.last:
            return
        self._pending[event.sequence] = event
        if self.ready.done():
            self._drain()

    @property
    def heartbeat_interval(self) -> timedelta:
        """The hub's heartbeat interval."""
        return self._hub.heartbeat_interval

    @property
    def stopping(self) -> bool:
        """Whether the server is shutting down (every watch must end)."""
        return self._hub.stopping.is_set()

    def first_in_ring(self) -> int:
        """The oldest sequence still in the ring (``last + 1`` when it is empty)."""
        return self._ring[0].sequence if self._ring else self.last + 1

    def batch_after(self, cursor: int, max_events: int, max_bytes: int) -> EventBatch | None:
        """The events after ``cursor`` (bounded), or None if the ring no longer holds the next one.

        Call only with ``cursor < last``.
        """
        start = cursor + 1 - self.first_in_ring()
        if start < 0:
            return None
        # Most watchers are current: they all ask for everything after the same cursor.
        batch = self._batches.get((cursor, self.last))
        if batch is not None:
            return batch
        end = min(len(self._ring), start + max_events)
        size = 0
        for index in range(start, end):
            size += len(self._ring[index].data)
            if size > max_bytes and index > start:
                end = index
                break
        key = (cursor, self._ring[end - 1].sequence)
        cached = self._batches.get(key)
        if cached is None:
            batch = EventBatch.of(tuple(self._ring[start:end]), made_at=self._hub.clock.now())
            cached = self._batches[key] = batch
            while len(self._batches) > _BATCH_CACHE_ENTRIES:
                self._batches.popitem(last=False)
        return cached

    async def resync(self) -> None:
        """Read from SQL whatever pub/sub has not delivered yet (at most once per half interval)."""
        now = self._hub.clock.now()
        if self._last_resync is not None and now - self._last_resync < self._hub.heartbeat_interval / 2:
            return
        self._last_resync = now
        await self.catch_up()

    async def catch_up(self) -> None:
        """Append the events SQL has after ``last``, page by page, and wake the watchers."""
        async with self._catch_up_lock:
            while True:
                page = await self._source.read(self.last, self._hub.ring_capacity)
                self._append_all(page.events)
                self._drain()
                if not page.events or self.last >= page.last_sequence:
                    return

    def _drain(self) -> None:
        appended = False
        while (event := self._pending.pop(self.last + 1, None)) is not None:
            self._append(event)
            appended = True
        for sequence in [s for s in self._pending if s <= self.last]:
            del self._pending[sequence]
        if self._pending and self._catch_up_task is None:
            # A gap: the events before the held ones are committed (sequences are handed out
            # in commit order), so SQL has them.
            self._catch_up_task = asyncio.create_task(self._fill_gap(), name=f"fill-gap {self.channel}")
        if appended:
            self._notify()

    async def _fill_gap(self) -> None:
        try:
            await self.catch_up()
        except Exception as error:  # retried on the next message or heartbeat
            log.warning("cannot fill an event gap on %s from SQL: %s", self.channel, error)
        finally:
            self._catch_up_task = None

    def _append_all(self, events: list[WireEvent]) -> None:
        """Append events read from SQL. SQL is the record: a hole in it was pruned by
        retention, so the ring restarts after it (watchers behind it get OUT_OF_RANGE)."""
        appended = False
        for event in events:
            if event.sequence <= self.last:
                continue
            if event.sequence > self.last + 1:
                self._ring.clear()
                self._batches.clear()
                self.last = event.sequence - 1
            self._append(event)
            appended = True
        if appended:
            self._notify()

    def _append(self, event: WireEvent) -> None:
        self._ring.append(event)
        self.last = event.sequence
        if event.terminal:
            self.terminal_sequence = event.sequence
        capacity = self._hub.ring_capacity
        # Trimmed in chunks: deleting from the front of a list copies it.
        if len(self._ring) > capacity + max(1, capacity // 8):
            del self._ring[: len(self._ring) - capacity]

    def _notify(self) -> None:
        waiting, self.waiting = self.waiting, set()
        for watcher in waiting:
            watcher.wake.set()


@dataclass(frozen=True)
class HubStats:
    """What the hub holds right now."""

    topics: int
    watchers: int
    connected: bool


class EventHub:
    """Shares one Redis pub/sub connection and one subscription per stream among all watchers."""

    def __init__(
        self,
        redis_url: str,
        clock: Clock,
        *,
        ring_capacity: int,
        heartbeat_interval_seconds: float,
        stopping: asyncio.Event,
        subscribe_timeout: float = 5.0,
    ) -> None:
        """Configure (not connect). ``stopping``: once set, every watch ends (server shutdown)."""
        if ring_capacity < 1:
            raise ValueError("ring_capacity must be at least 1")
        self.clock = clock
        self.ring_capacity = ring_capacity
        self.heartbeat_interval = timedelta(seconds=heartbeat_interval_seconds)
        self.stopping = stopping
        self._subscribe_timeout = subscribe_timeout
        self._topics: dict[str, Topic] = {}
        self._subscriber = Subscriber(
            redis_url,
            client_name=HUB_CLIENT_NAME,
            on_message=self._received,
            on_subscribed=self._subscribed,
            on_connection=self._connection_changed,
            connect_timeout=subscribe_timeout,
        )
        self._watchers_changed = asyncio.Event()
        self._watcher_count = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stats(self) -> HubStats:
        """Counts for tests and monitoring."""
        return HubStats(
            topics=len(self._topics),
            watchers=self._watcher_count,
            connected=self._subscriber.connected,
        )

    async def start(self) -> None:
        """Start the pub/sub connection (retried in the background) and the heartbeat scheduler."""
        self._tasks = [
            asyncio.create_task(self._schedule_heartbeats(), name="event-hub-heartbeats"),
            asyncio.create_task(self._wake_all_on_stop(), name="event-hub-stop"),
        ]
        await self._subscriber.start()

    async def stop(self) -> None:
        """Stop the tasks and close the connection; idempotent."""
        await self._subscriber.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str, source: StreamSource) -> AsyncIterator[Watcher]:
        """Register a watcher of ``channel``, subscribing it first if this process has none.

        On entry the topic is subscribed and knows the stream's newest sequence, so nothing
        published from then on can be missed. Raises ``Unavailable`` if Redis or SQL fails.
        """
        topic = self._topics.get(channel)
        created = topic is None
        if topic is None:
            topic = self._topics[channel] = Topic(self, channel, source)
        topic.references += 1
        try:
            if created:
                await self._initialize(topic)
            else:
                await asyncio.shield(topic.ready)
            watcher = Watcher(topic, due=self.clock.now() + self.heartbeat_interval)
            topic.watchers.add(watcher)
            self._watcher_count += 1
            if self._watcher_count == 1:
                self._watchers_changed.set()
            try:
                yield watcher
            finally:
                topic.watchers.discard(watcher)
                self._watcher_count -= 1
        finally:
            topic.references -= 1
            await self._release(topic)

    async def _initialize(self, topic: Topic) -> None:
        await self._subscriber.subscribe(topic.channel)
        try:
            await topic.initialize(self._subscribe_timeout)
        except BaseException as error:
            # Watchers that joined meanwhile fail too; a later one starts afresh.
            failure = error if isinstance(error, Exception) else Unavailable("subscription cancelled")
            topic.ready.set_exception(failure)
            topic.ready.exception()  # retrieved: nobody else may be waiting
            raise
        topic.ready.set_result(None)

    async def _release(self, topic: Topic) -> None:
        if topic.references > 0 or self._topics.get(topic.channel) is not topic:
            return
        del self._topics[topic.channel]
        await self._subscriber.unsubscribe(topic.channel)

    def _connection_changed(self, up: bool) -> None:
        for topic in list(self._topics.values()):
            if not up:
                topic.subscribed.clear()
            elif topic.ready.done():
                # Whatever was published while we were away is in SQL.
                asyncio.create_task(self._catch_up_after_reconnect(topic))  # noqa: RUF006

    def _subscribed(self, channel: str) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.subscribed.set()

    def _received(self, channel: str, data: bytes) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            for event in unpack(data):
                topic.offer(event)

    async def _catch_up_after_reconnect(self, topic: Topic) -> None:
        await topic.subscribed.wait()
        try:
            await topic.catch_up()
        except Exception as error:  # the next heartbeat retries
            log.warning("event hub: cannot catch up %s after reconnecting: %s", topic.channel, error)

    async def _schedule_heartbeats(self) -> None:
        """Mark watchers silent for the heartbeat interval; sleep until the next is due."""
        step = self.heartbeat_interval / 16
        while True:
            watchers = [w for topic in self._topics.values() for w in topic.watchers]
            self._watchers_changed.clear()
            if not watchers:
                await self._watchers_changed.wait()
                continue
            now = self.clock.now()
            for watcher in watchers:
                if watcher.due <= now and not watcher.heartbeat_due:
                    watcher.heartbeat_due = True
                    watcher.wake.set()
            pending = [w.due for w in watchers if not w.heartbeat_due]
            # Busy streams keep moving their due time; waking at most every 1/16 interval
            # keeps them from waking this loop on every event.
            wake_at = max(min(pending), now + step) if pending else now + self.heartbeat_interval
            await first_of(self.clock.sleep_until(wake_at), self._watchers_changed.wait())

    async def _wake_all_on_stop(self) -> None:
        await self.stopping.wait()
        for topic in self._topics.values():
            for watcher in topic.watchers:
                watcher.wake.set()


async def first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
