"""The scrape-time job counts for the metrics endpoint: two grouped reads of the jobs table
and one aggregate of the pending escalations, in one transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select

from cofounder_server.domain.escalations import EscalationStatus
from cofounder_server.domain.model import JobStatus
from cofounder_server.observability.prometheus import JobCounts
from cofounder_server.store.database import Database
from cofounder_server.store.models import EscalationRow, JobRow, RunnerRow

_RUNNING = JobStatus.RUNNING.value


async def count_jobs(database: Database, now: datetime) -> JobCounts:
    """Jobs by status, running jobs by agent state (with the age of the oldest state), the
    lease picture of running jobs, and the pending escalations (with the oldest one's age),
    as of ``now``."""
    by_status = {status.value: 0 for status in JobStatus}
    by_state: dict[str, int] = {}
    oldest: dict[str, float] = {}
    by_pair = select(JobRow.status, JobRow.agent_state, func.count(), func.min(JobRow.update_time)).group_by(
        JobRow.status, JobRow.agent_state
    )
    # A job's lease is its runner's.
    live_lease = and_(JobRow.runner_id.is_not(None), RunnerRow.lease_expires_at >= now)
    no_lease = or_(
        JobRow.runner_id.is_(None), RunnerRow.lease_expires_at.is_(None), RunnerRow.lease_expires_at < now
    )
    leases = (
        select(
            func.count().filter(no_lease),
            func.count(JobRow.runner_id.distinct()).filter(live_lease),
        )
        .select_from(JobRow)
        .outerjoin(RunnerRow, RunnerRow.runner_id == JobRow.runner_id)
        .where(JobRow.status == _RUNNING)
    )
    pending = select(func.count(), func.min(EscalationRow.create_time)).where(
        EscalationRow.state == EscalationStatus.PENDING.value
    )
    async with database.read() as session:
        for status, state, count, changed in await session.execute(by_pair):
            by_status[status] = by_status.get(status, 0) + count
            if status == _RUNNING and state is not None:
                by_state[state] = by_state.get(state, 0) + count
                age = max(0.0, (now - changed).total_seconds())
                oldest[state] = max(oldest.get(state, 0.0), age)
        unleased, holders = (await session.execute(leases)).one()
        escalations, raised = (await session.execute(pending)).one()
    waited = 0.0 if raised is None else max(0.0, (now - raised).total_seconds())
    return JobCounts(
        by_status, by_state, oldest, int(unleased or 0), int(holders or 0), int(escalations or 0), waited
    )
