"""The event log repository: job event logs and the escalation feed in SQL.

Sequences come from one counter row per stream (:class:`EventCounterRow`), incremented with
an upsert in the transaction that inserts the events. PostgreSQL holds that row's lock until
commit and SQLite holds its write lock, so concurrent appends on any number of replicas get
consecutive sequences in commit order: a reader that sees sequence N has every sequence
below N available too. Retention deletes a stream's oldest events in the same transaction
and records how far it went (``pruned_through``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from cofounder_server.domain.errors import NotFound
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.events import (
    EscalationEvent,
    EscalationEventKind,
    EventPayload,
    JobEvent,
    escalation_from_json,
    payload_from_json,
    payload_json,
    to_json,
)
from cofounder_server.store.bulk import insert_tuples
from cofounder_server.store.database import Database
from cofounder_server.store.models import EscalationEventRow, EventCounterRow, JobEventRow, JobRow, table_of

_ADVANCE_COUNTERS = (
    update(EventCounterRow)
    .where(EventCounterRow.stream.in_(bindparam("streams", expanding=True)))
    .values(last_sequence=EventCounterRow.last_sequence + bindparam("count"))
    .returning(EventCounterRow.stream, EventCounterRow.last_sequence, EventCounterRow.pruned_through)
)
"""Add ``count`` to the counters of ``streams``; their new values."""

ESCALATION_STREAM = "escalations"
"""The counter row of the escalation feed (one feed for every owner)."""

FLEET_STREAM = "fleet"
"""The counter row of the fleet feed: every change of a job's status, across owners."""


def job_stream(job_id: str) -> str:
    """The counter row of a job's event log."""
    return f"job:{job_id}"


@dataclass(frozen=True)
class Bounds:
    """Where a stream stands: events ``pruned_through + 1 .. last_sequence`` are available."""

    pruned_through: int
    last_sequence: int


@dataclass(frozen=True)
class JobEventPage:
    """Consecutive events of a job read in one transaction, and the log's bounds then."""

    events: list[JobEvent]
    bounds: Bounds


@dataclass(frozen=True)
class EscalationEventPage:
    """Escalation feed entries visible to a reader, and the feed's bounds when read.

    ``scanned_through``: every feed sequence up to it was considered (a filtered read skips
    entries the reader may not see, so this can be past the last returned event).
    """

    events: list[EscalationEvent]
    bounds: Bounds
    scanned_through: int


class EventLogRepository:
    """Append and read job events and escalation feed entries. Raises domain errors only."""

    def __init__(self, database: Database, *, retention_events: int) -> None:
        """``retention_events``: how many of its newest events each stream keeps, at least 1."""
        if retention_events < 1:
            raise ValueError("retention_events must be at least 1")
        self._database = database
        self._retention = retention_events

    # --- job event logs -----------------------------------------------------------------

    async def append_job_events(
        self, job_id: str, payloads: Sequence[EventPayload], *, now: datetime
    ) -> list[JobEvent]:
        """Append ``payloads`` to the job's log in one transaction; ``NotFound`` for a missing job.

        Events appended alone change nothing else about the job (a retry announced): they are
        not a fleet change, unlike every append inside a change's transaction.
        """
        try:
            async with self._database.write() as session:
                (events,) = await self.append_many_in(session, [(job_id, payloads)], now=now, fleet=False)
                return events
        except IntegrityError as error:
            # The foreign key: there is no such job.
            raise NotFound("job", job_id) from error

    async def append_job_events_in(
        self, session: AsyncSession, job_id: str, payloads: Sequence[EventPayload], *, now: datetime
    ) -> list[JobEvent]:
        """As :meth:`append_job_events`, inside the caller's write transaction ``session``.

        The events commit (and their sequences count) only if the caller's transaction does;
        the caller hands them to the change pipeline after commit. A missing job makes
        the statement or the commit fail with ``IntegrityError``.
        """
        if not payloads:
            raise ValueError("nothing to append")
        (events,) = await self.append_many_in(session, [(job_id, payloads)], now=now)
        return events

    async def append_many_in(
        self,
        session: AsyncSession,
        batches: Sequence[tuple[str, Sequence[EventPayload]]],
        *,
        now: datetime,
        fleet: bool = True,
    ) -> list[list[JobEvent]]:
        """Append events to several jobs' logs in the caller's transaction, with few statements
        (see :func:`append_job_events`)."""
        return await session.run_sync(
            lambda sync: append_job_events(
                sync.connection(), batches, now=now, horizon=self.prune_horizon, fleet=fleet
            )
        )

    async def stamp_fleet_in(self, session: AsyncSession, job_ids: Sequence[str]) -> dict[str, int]:
        """Make the jobs' change in the caller's transaction ``session`` a fleet change, for a
        change that appends no events (appends stamp their jobs themselves); each job's new
        fleet sequence."""
        return await session.run_sync(lambda sync: stamp_fleet(sync.connection(), job_ids))

    async def read_job_events(self, job_id: str, *, after: int, limit: int) -> JobEventPage:
        """Up to ``limit`` events with sequence > ``after``, in order, and the log's bounds."""
        async with self._database.read() as session:
            bounds = await self._bounds(session, job_stream(job_id))
            rows = await session.scalars(
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.sequence > after)
                .order_by(JobEventRow.sequence)
                .limit(limit)
            )
            events = [
                JobEvent(
                    job_id=row.job_id,
                    sequence=row.sequence,
                    time=row.time,
                    payload=payload_from_json(row.type, row.payload),
                )
                for row in rows
            ]
        return JobEventPage(events, bounds)

    async def job_bounds(self, job_id: str) -> Bounds:
        """The job log's bounds; ``Bounds(0, 0)`` before its first event."""
        async with self._database.read() as session:
            return await self._bounds(session, job_stream(job_id))

    async def job_last_sequences(self, job_ids: Sequence[str]) -> dict[str, int]:
        """The newest event sequence of each job's log in one read (0 before its first event)."""
        if not job_ids:
            return {}
        streams = {job_stream(job_id): job_id for job_id in job_ids}
        async with self._database.read() as session:
            rows = await session.execute(
                select(EventCounterRow.stream, EventCounterRow.last_sequence).where(
                    EventCounterRow.stream.in_(list(streams))
                )
            )
            found = {streams[stream]: int(last) for stream, last in rows}
        return {job_id: found.get(job_id, 0) for job_id in job_ids}

    # --- the escalation feed ------------------------------------------------------------

    async def append_escalation_event(
        self, kind: EscalationEventKind, escalation: Escalation, *, now: datetime
    ) -> EscalationEvent:
        """Append one entry to the escalation feed; ``NotFound`` when its job is missing."""
        try:
            async with self._database.write() as session:
                return await self.append_escalation_event_in(session, kind, escalation, now=now)
        except IntegrityError as error:
            raise NotFound("job", escalation.job_id) from error

    async def append_escalation_event_in(
        self, session: AsyncSession, kind: EscalationEventKind, escalation: Escalation, *, now: datetime
    ) -> EscalationEvent:
        """As :meth:`append_escalation_event`, inside the caller's write transaction ``session``
        (the entry commits with the change it describes)."""
        now = _utc(now)
        last, pruned = await self._advance(session, ESCALATION_STREAM, 1)
        await session.execute(
            insert(EscalationEventRow).values(
                sequence=last,
                escalation_id=escalation.escalation_id,
                job_id=escalation.job_id,
                owner_id=escalation.owner_id,
                kind=kind.value,
                time=now,
                escalation=to_json(escalation),
            )
        )
        horizon = self.prune_horizon(last, pruned)
        if horizon is not None:
            await self._prune_escalations(session, horizon)
            await self._set_pruned(session, ESCALATION_STREAM, horizon)
        return EscalationEvent(sequence=last, kind=kind, time=now, escalation=escalation)

    async def read_escalation_events(
        self, *, owner_scope: str | None, job_id: str | None, after: int, limit: int
    ) -> EscalationEventPage:
        """Up to ``limit`` visible feed entries with sequence > ``after``, in order."""
        async with self._database.read() as session:
            # PostgreSQL runs each statement on a snapshot of its own. Everything up to
            # ``before.last_sequence`` was committed before the rows are read, so a short page
            # has scanned that far; retention that ran meanwhile shows in ``after_read``.
            before = await self._bounds(session, ESCALATION_STREAM)
            query = (
                select(EscalationEventRow)
                .where(EscalationEventRow.sequence > after, *_visible(owner_scope, job_id))
                .order_by(EscalationEventRow.sequence)
                .limit(limit)
            )
            events = [_escalation_event(row) for row in await session.scalars(query)]
            after_read = await self._bounds(session, ESCALATION_STREAM)
        newest = events[-1].sequence if events else after
        scanned = newest if len(events) == limit else max(newest, before.last_sequence)
        return EscalationEventPage(events, Bounds(after_read.pruned_through, before.last_sequence), scanned)

    async def escalation_bounds(self) -> Bounds:
        """The escalation feed's bounds."""
        async with self._database.read() as session:
            return await self._bounds(session, ESCALATION_STREAM)

    async def pending_escalations(
        self, *, owner_scope: str | None, job_id: str | None, as_of: int
    ) -> list[Escalation]:
        """Escalations whose newest entry up to feed sequence ``as_of`` raised them, oldest first."""
        later = aliased(EscalationEventRow)
        query = (
            select(EscalationEventRow)
            .where(
                EscalationEventRow.kind == EscalationEventKind.RAISED.value,
                EscalationEventRow.sequence <= as_of,
                *_visible(owner_scope, job_id),
                ~exists().where(
                    later.escalation_id == EscalationEventRow.escalation_id,
                    later.sequence > EscalationEventRow.sequence,
                    later.sequence <= as_of,
                ),
            )
            .order_by(EscalationEventRow.sequence)
        )
        async with self._database.read() as session:
            return [escalation_from_json(row.escalation) for row in await session.scalars(query)]

    # --- shared -------------------------------------------------------------------------

    @staticmethod
    async def _advance(session: AsyncSession, stream: str, count: int) -> tuple[int, int]:
        """Reserve ``count`` sequences; the new last sequence and ``pruned_through``."""
        return await session.run_sync(lambda sync: advance_counter(sync.connection(), stream, count))

    def prune_horizon(self, last: int, pruned: int) -> int | None:
        """Up to which sequence to prune now, or None. Pruning waits for a tenth of the
        retention to pile up, so most appends delete nothing."""
        horizon = last - self._retention
        if horizon - pruned >= max(1, self._retention // 10):
            return horizon
        return None

    @staticmethod
    async def _set_pruned(session: AsyncSession, stream: str, horizon: int) -> None:
        await session.execute(
            update(EventCounterRow).where(EventCounterRow.stream == stream).values(pruned_through=horizon)
        )

    @staticmethod
    async def _prune_escalations(session: AsyncSession, horizon: int) -> None:
        # The newest entry of a pending escalation stays: the snapshot of pending escalations
        # reads it. It is below pruned_through, so no replay returns it.
        newest = aliased(EscalationEventRow)
        newest_sequence = (
            select(func.max(newest.sequence))
            .where(newest.escalation_id == EscalationEventRow.escalation_id)
            .scalar_subquery()
        )
        keep = and_(
            EscalationEventRow.kind == EscalationEventKind.RAISED.value,
            EscalationEventRow.sequence == newest_sequence,
        )
        await session.execute(delete(EscalationEventRow).where(EscalationEventRow.sequence <= horizon, ~keep))

    @staticmethod
    async def _bounds(session: AsyncSession, stream: str) -> Bounds:
        row = (
            await session.execute(
                select(EventCounterRow.pruned_through, EventCounterRow.last_sequence).where(
                    EventCounterRow.stream == stream
                )
            )
        ).one_or_none()
        if row is None:
            return Bounds(0, 0)
        return Bounds(int(row[0]), int(row[1]))


Horizon = Callable[[int, int], int | None]
"""``(last, pruned_through) -> prune up to`` (or None): a log's retention rule."""


def append_job_events(
    connection: Connection,
    batches: Sequence[tuple[str, Sequence[EventPayload]]],
    *,
    now: datetime,
    horizon: Horizon,
    fleet: bool = True,
) -> list[list[JobEvent]]:
    """Append events to several jobs' logs in ``connection``'s transaction; the stored events
    per entry, in order.

    One ``(job_id, payloads)`` per job (each job at most once, payloads not empty). Counter
    rows are advanced in one statement per distinct count for every job that already has one
    (a group commit's jobs nearly always add the same number of events: the same cached
    statement each time), so a batch of many jobs costs a constant number of statements.
    ``horizon`` is the retention rule (:meth:`EventLogRepository.prune_horizon`). A missing
    job makes the insert fail with ``IntegrityError`` (its foreign key). With ``fleet``, each
    job's append is its change's entry in the fleet feed (:func:`stamp_fleet`), and the
    stored events carry its fleet sequence.
    """
    now = _utc(now)
    counts = {job_stream(job_id): len(payloads) for job_id, payloads in batches}
    if len(counts) != len(batches) or not all(counts.values()):
        raise ValueError("each job once, with at least one event")
    if fleet and connection.dialect.name == "postgresql":
        # Row locks in one order: the jobs' rows, their counters, then the fleet counter, whose
        # stamp writes the rows again. A transaction that appends without having changed the
        # row (a model call recorded) takes the row here, before any counter.
        connection.execute(
            select(JobRow.job_id)
            .where(JobRow.job_id.in_(sorted(job_id for job_id, _ in batches)))
            .order_by(JobRow.job_id)
            .with_for_update()
        )
    by_count: dict[int, list[str]] = {}
    for stream, count in counts.items():
        by_count.setdefault(count, []).append(stream)
    advanced: dict[str, tuple[int, int]] = {}
    for count, streams in by_count.items():
        result = connection.execute(_ADVANCE_COUNTERS, {"count": count, "streams": sorted(streams)})
        advanced.update((str(stream), (int(last), int(pruned))) for stream, last, pruned in result)
    rows: list[tuple[Any, ...]] = []
    stored: list[list[JobEvent]] = []
    fleet_sequences = stamp_fleet(connection, [job_id for job_id, _ in batches]) if fleet else {}
    for job_id, payloads in batches:
        stream = job_stream(job_id)
        if stream in advanced:
            last, pruned = advanced[stream]
        else:
            last, pruned = advance_counter(connection, stream, len(payloads))
        first = last - len(payloads) + 1
        fleet_sequence = fleet_sequences.get(job_id, 0)
        events = [
            JobEvent(
                job_id=job_id,
                sequence=first + index,
                time=now,
                payload=payload,
                fleet_sequence=fleet_sequence,
            )
            for index, payload in enumerate(payloads)
        ]
        stored.append(events)
        rows.extend(
            (job_id, event.sequence, event.type, now, payload_json(event.payload)) for event in events
        )
        prune_to = horizon(last, pruned)
        if prune_to is not None:
            connection.execute(
                delete(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.sequence <= prune_to)
            )
            connection.execute(
                update(EventCounterRow)
                .where(EventCounterRow.stream == stream)
                .values(pruned_through=prune_to)
            )
    insert_tuples(connection, table_of(JobEventRow), _EVENT_COLUMNS, rows)
    return stored


def stamp_fleet(connection: Connection, job_ids: Sequence[str]) -> dict[str, int]:
    """Give each job (distinct ids) the next fleet sequence, in ``job_ids`` order, in
    ``connection``'s transaction; the sequences.

    The ``fleet`` counter row is locked until commit like any stream's, so fleet sequences
    follow commit order on every replica. A job keeps only its newest: the feed is coalesced.
    """
    if not job_ids:
        return {}
    last, _ = advance_counter(connection, FLEET_STREAM, len(job_ids))
    first = last - len(job_ids) + 1
    sequences = {job_id: first + index for index, job_id in enumerate(job_ids)}
    if connection.dialect.name == "sqlite":
        # Every group commit stamps each of its jobs: plain tuples to the driver (see bulk).
        connection.exec_driver_sql(
            _STAMP_SQLITE, [(sequence, job_id) for job_id, sequence in sequences.items()]
        )
    else:
        connection.execute(
            _STAMP, [{"id": job_id, "fleet": sequence} for job_id, sequence in sequences.items()]
        )
    return sequences


_STAMP = update(JobRow).where(JobRow.job_id == bindparam("id")).values(fleet_sequence=bindparam("fleet"))
_STAMP_SQLITE = f"UPDATE {JobRow.__tablename__} SET fleet_sequence = ? WHERE job_id = ?"
_EVENT_COLUMNS = ("job_id", "sequence", "type", "time", "payload")
"""A ``job_events`` row's columns, in the order of its values."""


def advance_counter(connection: Connection, stream: str, count: int) -> tuple[int, int]:
    """Reserve ``count`` sequences of ``stream`` (creating its counter row if needed); the new
    last sequence and ``pruned_through``."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    table = table_of(EventCounterRow)
    statement = dialect.insert(table).values(stream=stream, last_sequence=count, pruned_through=0)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.stream],
        set_={"last_sequence": table.c.last_sequence + count},
    ).returning(table.c.last_sequence, table.c.pruned_through)
    last, pruned = connection.execute(statement).one()
    return int(last), int(pruned)


def _visible(owner_scope: str | None, job_id: str | None) -> list[Any]:
    conditions: list[Any] = []
    if owner_scope is not None:
        conditions.append(EscalationEventRow.owner_id == owner_scope)
    if job_id is not None:
        conditions.append(EscalationEventRow.job_id == job_id)
    return conditions


def _escalation_event(row: EscalationEventRow) -> EscalationEvent:
    return EscalationEvent(
        sequence=row.sequence,
        kind=EscalationEventKind(row.kind),
        time=row.time,
        escalation=escalation_from_json(row.escalation),
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
