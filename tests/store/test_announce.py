"""Events appended on their own (a retry announced) go only to a running job its runner
still holds: nothing may follow a job's terminal event, which ends every watch of it."""

from __future__ import annotations

from cofounder_server.domain.events import AgentRetrying
from cofounder_server.domain.model import JobStatus
from cofounder_server.store.database import Database
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.runs import RunRepository

from .support import T0
from .test_leases import _claimed


def retrying() -> AgentRetrying:
    return AgentRetrying(
        error_signature="brain:overloaded",
        attempt=1,
        max_attempts=3,
        error_message="busy",
        next_attempt_time=T0,
    )


async def test_an_announcement_reaches_only_a_running_job_its_runner_holds(database: Database) -> None:
    event_log = EventLogRepository(database, retention_events=1000)
    runs = RunRepository(database, event_log)
    job_id = await _claimed(database, runs, "runner-a")

    announced = await runs.announce(job_id, "runner-a", [retrying()], now=T0)
    assert announced is not None
    assert [e.payload for e in announced] == [retrying()]
    assert await runs.announce(job_id, "runner-b", [retrying()], now=T0) is None

    change = await JobRepository(database, event_log).cancel(job_id, owner_scope=None, reason="stop", now=T0)
    assert change.job is not None
    assert change.job.status is JobStatus.CANCELLED
    assert await runs.announce(job_id, "runner-a", [retrying()], now=T0) is None
    page = await event_log.read_job_events(job_id, after=0, limit=100)
    last = page.events[-1]
    assert last.type == "job.status_changed"
    assert last.sequence == announced[0].sequence + 1
