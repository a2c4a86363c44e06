"""Reads of the fleet feed: every job at its newest change, ordered by fleet sequence.

Every change of a job's status stamps the job's row with the next sequence of the ``fleet``
counter in the change's transaction (:func:`cofounder_server.store.events.stamp_fleet`), so
the ``jobs`` table itself is the feed, coalesced: after a cursor, each changed job once, as it
stands. Nothing is pruned: every cursor up to the newest is valid for as long as its jobs
are stored, and a resume reads at most one row per job.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from cofounder_server.domain.model import Job, JobFilter
from cofounder_server.store.database import Database
from cofounder_server.store.events import FLEET_STREAM
from cofounder_server.store.jobs import job_of
from cofounder_server.store.models import EventCounterRow, JobRow


@dataclass(frozen=True)
class FleetJob:
    """A job as it stands and the fleet sequence of its newest change."""

    job: Job
    fleet_sequence: int


@dataclass(frozen=True)
class FleetChanges:
    """Jobs changed after a cursor, oldest change first, and how far the read looked:
    every change up to ``scanned_through`` is in ``jobs`` or superseded by a later one."""

    jobs: list[FleetJob]
    scanned_through: int


class FleetRepository:
    """Read the fleet feed and the jobs it covers. Raises domain errors only."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def last_sequence(self) -> int:
        """The newest fleet sequence (0 before the first change)."""
        async with self._database.read() as session:
            value = await session.scalar(
                select(EventCounterRow.last_sequence).where(EventCounterRow.stream == FLEET_STREAM)
            )
        return int(value or 0)

    async def snapshot_page(
        self, *, owner_scope: str | None, filter: JobFilter, after_job_id: str, limit: int
    ) -> list[FleetJob]:
        """Up to ``limit`` jobs matching ``filter`` with an id above ``after_job_id``, by id
        (keyset pages: a job changing between pages is neither skipped nor repeated)."""
        query = select(JobRow).where(JobRow.job_id > after_job_id)
        if owner_scope is not None:
            query = query.where(JobRow.owner_id == owner_scope)
        if filter.statuses:
            query = query.where(JobRow.status.in_(sorted(status.value for status in filter.statuses)))
        if filter.project_id:
            query = query.where(JobRow.project_id == filter.project_id)
        query = query.order_by(JobRow.job_id).limit(limit)
        async with self._database.read() as session:
            return [FleetJob(job_of(row), row.fleet_sequence) for row in await session.scalars(query)]

    async def changed(
        self, *, owner_scope: str | None, project_id: str, after: int, through: int | None, limit: int
    ) -> FleetChanges:
        """Up to ``limit`` jobs (of ``owner_scope``, in ``project_id`` unless empty) whose newest
        change is after ``after`` and at most ``through`` (``None``: the newest committed)."""
        async with self._database.read() as session:
            # Read first: sequences are handed out in commit order, so every change up to it is
            # committed and visible to the next statement, and none above it is taken.
            newest = int(
                await session.scalar(
                    select(EventCounterRow.last_sequence).where(EventCounterRow.stream == FLEET_STREAM)
                )
                or 0
            )
            bound = newest if through is None else min(through, newest)
            query = select(JobRow).where(JobRow.fleet_sequence > after, JobRow.fleet_sequence <= bound)
            if owner_scope is not None:
                query = query.where(JobRow.owner_id == owner_scope)
            if project_id:
                query = query.where(JobRow.project_id == project_id)
            query = query.order_by(JobRow.fleet_sequence).limit(limit)
            jobs = [FleetJob(job_of(row), row.fleet_sequence) for row in await session.scalars(query)]
        scanned = jobs[-1].fleet_sequence if len(jobs) == limit else max(bound, after)
        return FleetChanges(jobs, scanned)
