"""The watch loop shared by both feeds: replay after a cursor, then the live tail, exactly once.

A watch first joins its stream's topic (subscribed, so nothing published from then on can
be missed), then reads the snapshot, then sends every event after the cursor: from the
topic's ring when it still holds them, otherwise from SQL page by page, then live. Every
send carries everything the watcher has not seen yet, up to a bounded batch, so a watcher
that fell behind catches up in few messages instead of one per event.

How a watch ends:

* after a job's terminal event: normally (gRPC OK);
* ``OutOfRange`` (reason ``CURSOR_EXPIRED``, metadata ``oldest_sequence``) when the cursor
  is older than the retained history;
* ``Unavailable`` (reason ``WATCHER_TOO_SLOW``) when a watcher that was following live fell
  further behind than the topic's ring holds: ending it bounds what the server keeps for a
  client that does not read. Resume after the ``last_sequence`` in the error's metadata;
* ``Unavailable`` (reason ``SERVER_SHUTTING_DOWN``) when the server stops; resume likewise,
  on any replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.errors import FieldViolation, InvalidArgument, OutOfRange, Unavailable
from cofounder_server.events.hub import EventBatch, Watcher, WireEvent

MAX_BATCH_EVENTS = 500
"""Most events in one stream message."""
MAX_BATCH_BYTES = 1024 * 1024
"""Most encoded event bytes in one stream message (one event may exceed it alone)."""


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new: every event up to ``latest_sequence`` was delivered (or filtered out)."""

    latest_sequence: int
    time: datetime


@dataclass(frozen=True)
class FeedPage:
    """What a watcher may see of the stream after a cursor, read from SQL.

    ``scanned_through`` is how far the read looked (a filtered read can look past its last
    event); ``pruned_through`` is how far retention has deleted.
    """

    events: list[WireEvent]
    scanned_through: int
    pruned_through: int


ReadPage = Callable[[int, int], Awaitable[FeedPage]]
"""Reads a watcher's view of the stream from SQL: ``(after, limit) -> FeedPage``."""

Visible = Callable[[WireEvent], bool]


def check_cursor(field: str, after: int, pruned_through: int, last_sequence: int) -> None:
    """Reject a cursor beyond the newest event or older than the retained history.

    ``0`` asks for the whole retained history and is never out of range.
    """
    if after > last_sequence:
        raise InvalidArgument(
            [FieldViolation(field, f"{after} is beyond the newest sequence ({last_sequence})")]
        )
    if 0 < after < pruned_through:
        raise cursor_expired(pruned_through)


def cursor_expired(pruned_through: int) -> OutOfRange:
    """The error for a cursor older than the retained history."""
    oldest = pruned_through + 1
    return OutOfRange(
        "CURSOR_EXPIRED",
        f"events up to {pruned_through} are no longer retained; the oldest available is {oldest}",
        metadata={"oldest_sequence": str(oldest)},
    )


def interrupted(reason: str, message: str, last_sequence: int) -> Unavailable:
    """A resumable end of a watch: the client reconnects after ``last_sequence``."""
    return Unavailable(
        f"{message}; resume after sequence {last_sequence}",
        reason=reason,
        metadata={"last_sequence": str(last_sequence)},
    )


async def follow(
    watcher: Watcher,
    cursor: int,
    read_page: ReadPage,
    clock: Clock,
    *,
    visible: Visible | None = None,
    end_on_terminal: bool = False,
) -> AsyncIterator[EventBatch | Heartbeat]:
    """Yield the stream after ``cursor``: batches of events in order, exactly once, then the
    live tail, with heartbeats when idle. ``visible`` filters what this watcher may see."""
    topic = watcher.topic
    live = False  # following the ring; falling out of it then means "too slow"
    while True:
        if topic.stopping:
            raise interrupted("SERVER_SHUTTING_DOWN", "the server is shutting down", cursor)
        if cursor < topic.last:
            batch = topic.batch_after(cursor, MAX_BATCH_EVENTS, MAX_BATCH_BYTES)
            if batch is None:
                if live:
                    observability.metrics.watchers_too_slow.inc()
                    raise interrupted("WATCHER_TOO_SLOW", "the watcher fell too far behind", cursor)
                page = await read_page(cursor, MAX_BATCH_EVENTS)
                if cursor < page.pruned_through:
                    raise cursor_expired(page.pruned_through)
                if not page.events and page.scanned_through <= cursor:
                    await watcher.wait()  # SQL is behind what pub/sub announced: not a busy loop
                    continue
                cursor = max(cursor, page.scanned_through)
                events = tuple(page.events)
                batch = EventBatch.of(events) if events else None
            else:
                live = True
                cursor = batch.events[-1].sequence
                if visible is not None:
                    events = tuple(e for e in batch.events if visible(e))
                    batch = EventBatch.of(events) if events else None
            if batch is not None:
                yield batch
                observability.metrics.events_delivered.inc(len(batch.events))
                watcher.sent(batch.made_at or clock.now())
                if end_on_terminal and batch.terminal:
                    return
            continue
        if watcher.heartbeat_due:
            # Before saying "nothing was skipped", make sure no publish was lost on the way.
            await topic.resync()
            if cursor < topic.last:
                continue
            yield Heartbeat(cursor, clock.now())
            watcher.sent(clock.now())
            continue
        await watcher.wait()
