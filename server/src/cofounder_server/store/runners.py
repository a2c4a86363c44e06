"""Runner leases: which executor processes are alive, one row per process.

A job being run names its runner (``jobs.runner_id``); the runner's one row says until when
it is alive. Keeping a claim alive is then one UPDATE of one row per renewal, however many
jobs the process holds (10,000 parked agents cost what one does). When a runner stops
renewing (``kill -9``, a lost host), its lease expires and every other executor may take its
jobs over; a graceful stop releases the jobs and deletes the row at once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, delete, exists, func, insert, or_, select, update

from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.models import CheckpointRow, JobRow, RunnerRow

_RUNNING = JobStatus.RUNNING.value
FORGET_AFTER = timedelta(hours=1)
"""How long an expired runner's row stays after its jobs were taken over: a process that
stalled past its lease and comes back re-creates its row when it renews, well within this."""


@dataclass(frozen=True, slots=True)
class HeldJob:
    """What an executor needs to know about a job it holds or may hold: no goal, no config."""

    job_id: str
    status: JobStatus
    agent_state: AgentState | None
    wake_at: datetime | None
    runner_id: str | None
    conversation_bytes: int = 0
    """What its conversation weighs, where the read asked for it (parked agents)."""


_READ_PAGE = 1000
"""Jobs read by id in one statement at most (SQLite bounds a statement's parameters)."""

_HELD_COLUMNS = (JobRow.job_id, JobRow.status, JobRow.agent_state, JobRow.wake_at, JobRow.runner_id)


_SIZE = func.coalesce(CheckpointRow.conversation_bytes, 0)
"""A job's conversation size, from its checkpoint (0 before the first)."""


def _held(row: Sequence[object], size: object = 0) -> HeldJob:
    job_id, status, agent_state, wake_at, runner_id = row
    return HeldJob(
        str(job_id),
        JobStatus(str(status)),
        None if agent_state is None else AgentState(str(agent_state)),
        wake_at,  # type: ignore[arg-type]
        None if runner_id is None else str(runner_id),
        int(size or 0),  # type: ignore[call-overload]
    )


class RunnerLeases:
    """Lease rows of executor processes. Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def renew(self, runner_id: str, *, now: datetime, lease_until: datetime) -> bool:
        """Extend the lease; False when it had lapsed or did not exist (it is then taken
        anew): jobs may have been taken over meanwhile, and the caller must check which of
        its jobs still name it."""
        return await self._database.transact(_renew, runner_id, now=_utc(now), lease_until=_utc(lease_until))

    async def expired(self, runner_id: str, *, now: datetime) -> list[str]:
        """Other runners whose lease has expired (their running jobs may be taken over)."""
        async with self._database.read() as session:
            rows = await session.scalars(
                select(RunnerRow.runner_id).where(
                    RunnerRow.lease_expires_at < _utc(now), RunnerRow.runner_id != runner_id
                )
            )
            return [str(runner) for runner in rows]

    async def forget_expired(self, *, now: datetime) -> int:
        """Delete the runners expired for :data:`FORGET_AFTER` that no running job names any
        more; how many."""
        return await self._database.transact(_forget_expired, _utc(now))

    async def release(self, runner_id: str) -> None:
        """Hand every running job of the runner over and end its lease (a graceful stop):
        any executor may claim the jobs at once."""
        await self._database.transact(_release, runner_id)

    # --- what runners hold ------------------------------------------------------------------

    async def jobs_of(self, runner_id: str) -> list[HeldJob]:
        """The running jobs that name ``runner_id`` (after a restart, or a lapsed lease)."""
        async with self._database.read() as session:
            rows = await session.execute(
                select(*_HELD_COLUMNS, _SIZE)
                .outerjoin(CheckpointRow, CheckpointRow.job_id == JobRow.job_id)
                .where(JobRow.runner_id == runner_id, JobRow.status == _RUNNING)
                .order_by(JobRow.create_time, JobRow.job_id)
            )
            return [_held(row[:-1], row[-1]) for row in rows.all()]

    async def job(self, job_id: str) -> HeldJob | None:
        """The job as an executor needs it, with its runner."""
        async with self._database.read() as session:
            row = (await session.execute(select(*_HELD_COLUMNS).where(JobRow.job_id == job_id))).one_or_none()
            return None if row is None else _held(row)

    async def versions_since(self, since: datetime) -> dict[str, int]:
        """The version of each job whose row changed at or after ``since`` (the sweep's
        window: what a lost notification would have said). Every change of a row moves its
        ``update_time`` and its ``version`` together."""
        async with self._database.read() as session:
            rows = await session.execute(
                select(JobRow.job_id, JobRow.version).where(JobRow.update_time >= _utc(since))
            )
            return {str(job_id): int(version) for job_id, version in rows}

    async def jobs(self, job_ids: Sequence[str]) -> list[HeldJob]:
        """The jobs as an executor needs them, with their runners (missing ones left out)."""
        found: list[HeldJob] = []
        for first in range(0, len(job_ids), _READ_PAGE):
            page = list(job_ids[first : first + _READ_PAGE])
            async with self._database.read() as session:
                rows = await session.execute(select(*_HELD_COLUMNS).where(JobRow.job_id.in_(page)))
                found += [_held(row) for row in rows.all()]
        return found

    async def claim_parked(
        self,
        runner_id: str,
        *,
        parked_states: Collection[AgentState],
        expired: Sequence[str],
        limit: int,
    ) -> list[HeldJob]:
        """Take up to ``limit`` parked running jobs that no live runner holds (unowned, or of
        an ``expired`` runner) in one transaction, oldest first. A claim is bookkeeping, not a
        change of the job: no version bump, no event."""
        if limit < 1:
            return []
        free: ColumnElement[bool] = JobRow.runner_id.is_(None)
        if expired:
            free = or_(free, JobRow.runner_id.in_(list(expired)))
        condition = (
            JobRow.status == _RUNNING,
            JobRow.agent_state.in_([state.value for state in parked_states]),
            free,
        )
        candidates = (
            select(JobRow.job_id).where(*condition).order_by(JobRow.create_time, JobRow.job_id).limit(limit)
        )
        if self._database.dialect_name == "postgresql":
            # Rows another claimer holds are skipped, not waited for; the UPDATE re-checks the
            # conditions, so each job goes to one runner.
            candidates = candidates.with_for_update(skip_locked=True)
        async with self._database.read() as session:
            # Mostly there is nothing to claim: find out without taking SQLite's write lock.
            if await session.scalar(select(JobRow.job_id).where(*condition).limit(1)) is None:
                return []
        return await self._database.transact(_claim_parked, candidates, condition, runner_id)


def _renew(connection: Connection, runner_id: str, *, now: datetime, lease_until: datetime) -> bool:
    renewed = connection.scalar(
        update(RunnerRow)
        .where(RunnerRow.runner_id == runner_id, RunnerRow.lease_expires_at >= now)
        .values(lease_expires_at=lease_until)
        .returning(RunnerRow.runner_id)
    )
    if renewed is not None:
        return True
    lapsed = connection.scalar(
        update(RunnerRow)
        .where(RunnerRow.runner_id == runner_id)
        .values(lease_expires_at=lease_until, start_time=now)
        .returning(RunnerRow.runner_id)
    )
    if lapsed is None:
        connection.execute(
            insert(RunnerRow).values(runner_id=runner_id, lease_expires_at=lease_until, start_time=now)
        )
    return False


def _forget_expired(connection: Connection, now: datetime) -> int:
    gone = connection.scalars(
        delete(RunnerRow)
        .where(
            RunnerRow.lease_expires_at < now - FORGET_AFTER,
            ~exists().where(JobRow.runner_id == RunnerRow.runner_id, JobRow.status == _RUNNING),
        )
        .returning(RunnerRow.runner_id)
    )
    return len(list(gone))


def _release(connection: Connection, runner_id: str) -> None:
    mine = (JobRow.runner_id == runner_id, JobRow.status == _RUNNING)
    if connection.dialect.name == "postgresql":
        # Row locks in job_id order, as the group commit takes them: no deadlock.
        connection.execute(select(JobRow.job_id).where(*mine).order_by(JobRow.job_id).with_for_update())
    connection.execute(update(JobRow).where(*mine).values(runner_id=None))
    connection.execute(delete(RunnerRow).where(RunnerRow.runner_id == runner_id))


def _claim_parked(
    connection: Connection,
    candidates: Select[Any],
    condition: Sequence[ColumnElement[bool]],
    runner_id: str,
) -> list[HeldJob]:
    job_ids = list(connection.scalars(candidates))
    if not job_ids:
        return []
    rows = connection.execute(
        update(JobRow)
        .where(JobRow.job_id.in_(job_ids), *condition)
        .values(runner_id=runner_id)
        .returning(*_HELD_COLUMNS, JobRow.create_time)
    )
    # RETURNING has no order: oldest first, as selected.
    claimed = sorted(rows.all(), key=lambda row: (row[-1], row[0]))
    sizes = dict(
        connection.execute(
            select(CheckpointRow.job_id, CheckpointRow.conversation_bytes).where(
                CheckpointRow.job_id.in_(job_ids)
            )
        ).all()
    )
    return [_held(row[:-1], sizes.get(row[0], 0)) for row in claimed]


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)
