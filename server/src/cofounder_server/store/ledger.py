"""The usage ledger and budget top-ups: what a job spent in a budget window, and on what budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import ColumnElement

from cofounder_server.domain.changes import Spend
from cofounder_server.domain.model import Job
from cofounder_server.store.database import Database
from cofounder_server.store.models import BudgetAdjustmentRow, UsageLedgerRow


class LedgerRepository:
    """Reads the ledger (rows are written by the group commit, top-ups by WakeAgent).
    Raises domain errors only (``Unavailable`` included)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def budget_of(self, job_id: str, window: datetime) -> tuple[int, int]:
        """``(spent, top_ups)`` of ``window``."""
        async with self._database.read() as session:
            return await budget_in(session, job_id, window)

    async def spend_of(self, job: Job, window: datetime) -> Spend:
        """Today's spend of ``job`` and today's budget, for the budget window ``window``."""
        spent, top_ups = await self.budget_of(job.job_id, window)
        return Spend(spent, job.daily_budget_microdollars + top_ups)

    async def spend_and_progress(self, job: Job, window: datetime) -> tuple[Spend, int]:
        """As :meth:`spend_of`, with the newest recorded iteration (model call) of the job
        (0 before the first), in one read."""
        async with self._database.read() as session:
            spent, top_ups = await budget_in(session, job.job_id, window)
            newest = await session.scalar(
                select(func.coalesce(func.max(UsageLedgerRow.iteration), 0)).where(
                    UsageLedgerRow.job_id == job.job_id
                )
            )
            return Spend(spent, job.daily_budget_microdollars + top_ups), int(newest or 0)

    async def spend_and_progress_many(
        self, jobs: Sequence[Job], window: datetime
    ) -> dict[str, tuple[Spend, int]]:
        """:meth:`spend_and_progress` of every job in ``jobs``, in one read of three grouped
        statements."""
        if not jobs:
            return {}
        ids = [job.job_id for job in jobs]
        start = window.astimezone(UTC)
        async with self._database.read() as session:
            spent_sums, top_up_sums = window_sums(ids, start)
            spent = dict((await session.execute(spent_sums)).all())
            top_ups = dict((await session.execute(top_up_sums)).all())
            newest = await _per_job(
                session,
                UsageLedgerRow.job_id,
                func.max(UsageLedgerRow.iteration),
                UsageLedgerRow.job_id.in_(ids),
            )
        return {
            job.job_id: (window_spend(job, spent, top_ups), int(newest.get(job.job_id) or 0)) for job in jobs
        }


def window_sums(ids: Sequence[str], start: datetime) -> tuple[Select[str, int], Select[str, int]]:
    """The statements that read, by job of ``ids``, the cost spent and the top-ups in the
    budget window that opened at ``start`` (UTC); a job without rows is absent from their
    results, which :func:`window_spend` reads."""
    return (
        select(UsageLedgerRow.job_id, func.sum(UsageLedgerRow.cost_microdollars))
        .where(UsageLedgerRow.job_id.in_(ids), UsageLedgerRow.window_start == start)
        .group_by(UsageLedgerRow.job_id),
        select(BudgetAdjustmentRow.job_id, func.sum(BudgetAdjustmentRow.amount_microdollars))
        .where(BudgetAdjustmentRow.job_id.in_(ids), BudgetAdjustmentRow.window_start == start)
        .group_by(BudgetAdjustmentRow.job_id),
    )


def window_spend(job: Job, spent: Mapping[str, Any], top_ups: Mapping[str, Any]) -> Spend:
    """``job``'s spend and budget from the results of :func:`window_sums`, as ``{job_id: sum}``."""
    return Spend(
        int(spent.get(job.job_id) or 0), job.daily_budget_microdollars + int(top_ups.get(job.job_id) or 0)
    )


async def _per_job(
    session: AsyncSession,
    job_id: InstrumentedAttribute[str],
    aggregate: ColumnElement[Any],
    *where: ColumnElement[bool],
) -> dict[str, Any]:
    """``aggregate`` of the rows matching ``where``, by ``job_id`` (jobs without rows absent)."""
    rows = await session.execute(select(job_id, aggregate).where(*where).group_by(job_id))
    return dict(rows.all())


async def budget_in(session: AsyncSession, job_id: str, window: datetime) -> tuple[int, int]:
    """``(spent, top_ups)`` of ``window``, read in ``session``'s transaction."""
    start = window.astimezone(UTC)
    spent = await session.scalar(
        select(func.coalesce(func.sum(UsageLedgerRow.cost_microdollars), 0)).where(
            UsageLedgerRow.job_id == job_id, UsageLedgerRow.window_start == start
        )
    )
    top_ups = await session.scalar(
        select(func.coalesce(func.sum(BudgetAdjustmentRow.amount_microdollars), 0)).where(
            BudgetAdjustmentRow.job_id == job_id, BudgetAdjustmentRow.window_start == start
        )
    )
    return int(spent or 0), int(top_ups or 0)
