"""Job creation in batches: any number of SubmitJob requests in one transaction with a
constant number of statements.

Every request either creates a QUEUED job at version 1 with its ``job.status_changed``
event at sequence 1, or replays the job its ``request_id`` created before (in an earlier
transaction or earlier in the same batch), or is refused (``AlreadyExists``) because its
``request_id`` was used for a different request. The batch reads its requests'
idempotency keys in one statement, decides every request in Python (:func:`plan`), then
inserts jobs, keys, event counters and events with one executemany each, through
:meth:`Database.transact` (on SQLite one trip to the writer thread).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select

from cofounder_server.domain.errors import AlreadyExists
from cofounder_server.domain.events import JobEvent, JobStatusChanged, to_json
from cofounder_server.domain.model import AgentSpec, Job, JobStatus, NewJob
from cofounder_server.store.bulk import insert_rows
from cofounder_server.store.database import Database
from cofounder_server.store.events import FLEET_STREAM, advance_counter, job_stream
from cofounder_server.store.idempotency import reused_key
from cofounder_server.store.models import (
    EventCounterRow,
    IdempotencyKeyRow,
    JobEventRow,
    JobRow,
    table_of,
)

SUBMIT_JOB = "SubmitJob"
"""The idempotency-key operation name of job creation."""

Row = TypeVar("Row")

Key = tuple[str, str]
"""``(owner_id, request_id)``: an idempotency key of job creation."""


@dataclass(frozen=True)
class JobCreation:
    """One request to create a job. ``fingerprint`` identifies the request's contents (compared
    with a retry of its ``request_id``; empty without one)."""

    new: NewJob
    request_id: str | None
    fingerprint: str


@dataclass(frozen=True)
class Replay:
    """The request repeats one whose job was created in an earlier transaction."""

    job_id: str


Decision = int | Replay | AlreadyExists
"""What becomes of a request: the index (in its batch) of the request whose new job it
gets (its own index when it creates the job), a :class:`Replay`, or the refusal."""


@dataclass(frozen=True)
class CommittedCreations:
    """A committed batch: a decision per request, and the jobs it created with their first
    event, by the index of the request that created each."""

    decisions: list[Decision]
    created: dict[int, tuple[Job, JobEvent]]


def plan(creations: Sequence[JobCreation], existing: Mapping[Key, tuple[str, str]]) -> list[Decision]:
    """Decide every request of a batch, given the keys already stored (``(owner_id,
    request_id) -> (fingerprint, job_id)``). The first request with a new key creates the
    job; later ones with that key and the same fingerprint get it too."""
    first: dict[Key, int] = {}
    decisions: list[Decision] = []
    for index, creation in enumerate(creations):
        if creation.request_id is None:
            decisions.append(index)
            continue
        key = (creation.new.owner_id, creation.request_id)
        stored = existing.get(key)
        if stored is not None:
            fingerprint, job_id = stored
            same = fingerprint == creation.fingerprint
            decisions.append(Replay(job_id) if same else reused_key(SUBMIT_JOB, creation.request_id))
        elif key in first:
            earlier = first[key]
            same = creations[earlier].fingerprint == creation.fingerprint
            decisions.append(earlier if same else reused_key(SUBMIT_JOB, creation.request_id))
        else:
            first[key] = index
            decisions.append(index)
    return decisions


def queued_job(new: NewJob, now: datetime) -> Job:
    """``new`` as a job that is about to be stored: QUEUED at version 1, with a new id."""
    return Job(
        job_id=str(uuid.uuid4()),
        owner_id=new.owner_id,
        project_id=new.project_id,
        goal=new.goal,
        daily_budget_microdollars=new.daily_budget_microdollars,
        agent=AgentSpec(
            brain=new.agent.brain,
            model=new.agent.model,
            config=dict(new.agent.config),
            tool_approval=new.agent.tool_approval,
        ),
        labels=dict(new.labels),
        status=JobStatus.QUEUED,
        outcome=None,
        outcome_detail="",
        agent_state=None,
        wake_at=None,
        create_time=now,
        update_time=now,
        end_time=None,
        version=1,
    )


def job_row(job: Job) -> dict[str, Any]:
    """The ``jobs`` row of a new job, every column named."""
    return {
        "job_id": job.job_id,
        "owner_id": job.owner_id,
        "project_id": job.project_id,
        "goal": job.goal,
        "daily_budget_microdollars": job.daily_budget_microdollars,
        "agent_brain": job.agent.brain,
        "agent_model": job.agent.model,
        "agent_config": job.agent.config,
        "labels": job.labels,
        "status": job.status.value,
        "outcome": None,
        "outcome_detail": job.outcome_detail,
        "agent_state": None,
        "wake_at": None,
        "pending_escalations": [],
        "tool_approval": None if job.agent.tool_approval is None else job.agent.tool_approval.to_json(),
        "approved_tools": [],
        "create_time": job.create_time,
        "update_time": job.update_time,
        "end_time": None,
        "runner_id": None,
        "version": job.version,
        "fleet_sequence": 0,
    }


@dataclass
class _Rows:
    """Every row one request inserts if it creates its job."""

    job: Job
    event: JobEvent
    rows: dict[Table, dict[str, Any]]


def _rows_of(creation: JobCreation, now: datetime) -> _Rows:
    job = queued_job(creation.new, now)
    event = JobEvent(job_id=job.job_id, sequence=1, time=now, payload=JobStatusChanged(status=job.status))
    rows = {
        _JOBS: job_row(job),
        _COUNTERS: {"stream": job_stream(job.job_id), "last_sequence": 1, "pruned_through": 0},
        _EVENTS: {
            "job_id": job.job_id,
            "sequence": 1,
            "type": event.type,
            "time": now,
            "payload": to_json(event.payload),
        },
    }
    if creation.request_id is not None:
        rows[_KEYS] = {
            "owner_id": creation.new.owner_id,
            "operation": SUBMIT_JOB,
            "request_id": creation.request_id,
            "fingerprint": creation.fingerprint,
            "resource_id": job.job_id,
            "create_time": now,
        }
    return _Rows(job, event, rows)


_JOBS = table_of(JobRow)
_KEYS = table_of(IdempotencyKeyRow)
_COUNTERS = table_of(EventCounterRow)
_EVENTS = table_of(JobEventRow)
_INSERT_ORDER = (_JOBS, _KEYS, _COUNTERS, _EVENTS)
"""Jobs before what refers to them."""


class JobCreations:
    """Commits batches of job creations (see the module docs)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def commit(self, creations: Sequence[JobCreation], now: datetime) -> CommittedCreations:
        """Create the batch's jobs in one transaction. ``now``: an aware UTC time.

        Raises ``Unavailable`` when the database cannot be reached, and SQLAlchemy's
        ``IntegrityError`` when a concurrent transaction stored one of the keys first (the
        batch is then rolled back; run it again to replay that key).
        """
        prepared = [_rows_of(creation, now) for creation in creations]
        decisions = await self._database.transact(_write, creations, [item.rows for item in prepared])
        created = {
            index: (
                prepared[index].job,
                dataclasses.replace(
                    prepared[index].event, fleet_sequence=prepared[index].rows[_JOBS]["fleet_sequence"]
                ),
            )
            for index, decision in enumerate(decisions)
            if _creates(index, decision)
        }
        return CommittedCreations(decisions, created)


def _write(
    connection: Connection, creations: Sequence[JobCreation], rows: Sequence[dict[Table, dict[str, Any]]]
) -> list[Decision]:
    existing: dict[Key, tuple[str, str]] = {}
    owners, request_ids = _lookup(creations)
    if request_ids:
        keys = connection.execute(
            select(_KEYS.c.owner_id, _KEYS.c.request_id, _KEYS.c.fingerprint, _KEYS.c.resource_id).where(
                _KEYS.c.owner_id.in_(owners),
                _KEYS.c.operation == SUBMIT_JOB,
                _KEYS.c.request_id.in_(request_ids),
            )
        )
        existing = {(owner, request): (print_, job) for owner, request, print_, job in keys}
    decisions = plan(creations, existing)
    creating = [rows[index] for index, decision in enumerate(decisions) if _creates(index, decision)]
    if creating:
        # A new job is a fleet change: it enters every watch of its owner.
        last, _ = advance_counter(connection, FLEET_STREAM, len(creating))
        for position, job_rows in enumerate(creating, start=last - len(creating) + 1):
            job_rows[_JOBS]["fleet_sequence"] = position
    for table, table_rows in _inserted(decisions, rows):
        insert_rows(connection, table, table_rows)
    return decisions


def _lookup(creations: Sequence[JobCreation]) -> tuple[list[str], list[str]]:
    """The owners and request ids whose stored keys a batch must read (one statement
    reads every combination; :func:`plan` takes the pairs it needs)."""
    keyed = [creation for creation in creations if creation.request_id is not None]
    owners = sorted({creation.new.owner_id for creation in keyed})
    return owners, sorted({creation.request_id for creation in keyed if creation.request_id is not None})


def _inserted(
    decisions: Sequence[Decision], rows: Sequence[dict[Table, Row]]
) -> list[tuple[Table, list[Row]]]:
    """The rows to insert, per table in insertion order, of the requests that create a job."""
    creating = [rows[index] for index, decision in enumerate(decisions) if _creates(index, decision)]
    found = [(table, [item[table] for item in creating if table in item]) for table in _INSERT_ORDER]
    return [(table, table_rows) for table, table_rows in found if table_rows]


def _creates(index: int, decision: Decision) -> bool:
    return isinstance(decision, int) and decision == index
