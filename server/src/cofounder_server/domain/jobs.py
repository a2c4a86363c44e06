"""Submitting, reading, listing and cancelling jobs, scoped to the calling principal."""

from __future__ import annotations

from typing import Protocol

from cofounder_server.clock import Clock
from cofounder_server.domain.errors import NotFound
from cofounder_server.domain.model import Job, JobFilter, NewJob
from cofounder_server.domain.pagination import (
    Cursor,
    decode_page_token,
    encode_page_token,
    filter_fingerprint,
    page_size_or_default,
)
from cofounder_server.domain.principal import Principal
from cofounder_server.events.model import EventPayload, JobStatusChanged
from cofounder_server.store.idempotency import request_fingerprint
from cofounder_server.store.jobs import JobRepository


class JobObserver(Protocol):
    """Told about every committed change to a job, so live views can follow."""

    async def job_changed(self, job: Job) -> None:
        """React to ``job`` as committed (its ``version`` orders changes)."""
        ...


class EventPublisher(Protocol):
    """Appends events to a job's log (``cofounder_server.events.job_events.JobEvents``)."""

    async def publish(self, job_id: str, event: EventPayload) -> int:
        """Store and fan out ``event``; its sequence in the job's log."""
        ...


class JobService:
    """The job use cases. Every call is scoped by the principal in the storage query.

    Every status change is published as a ``job.status_changed`` event after it commits.
    """

    def __init__(
        self, jobs: JobRepository, observer: JobObserver, clock: Clock, events: EventPublisher
    ) -> None:
        self._jobs = jobs
        self._observer = observer
        self._clock = clock
        self._events = events

    async def submit(self, principal: Principal, new: NewJob, request_id: str | None) -> Job:
        """Store a queued job; a retried ``request_id`` returns the job it created."""
        job, created = await self._jobs.create(
            new, request_id=request_id, fingerprint=request_fingerprint(new), now=self._clock.now()
        )
        if created:
            await self._observer.job_changed(job)
            await self._events.publish(job.job_id, JobStatusChanged(status=job.status))
        return job

    async def get(self, principal: Principal, job_id: str) -> Job:
        """The job, or NotFound when it is missing or not the caller's."""
        job = await self._jobs.get(job_id, owner_scope=principal.owner_scope)
        if job is None:
            raise NotFound("job", job_id)
        return job

    async def list(
        self, principal: Principal, job_filter: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """One page of the caller's jobs, newest first, and the next page's token ("" at the end)."""
        size = page_size_or_default(page_size)
        fingerprint = filter_fingerprint(
            principal.principal_id, sorted(job_filter.statuses), job_filter.project_id
        )
        cursor = decode_page_token(page_token, fingerprint)
        jobs, after = await self._jobs.list(
            owner_scope=principal.owner_scope,
            filter=job_filter,
            page_size=size,
            after=(cursor.create_time, cursor.item_id) if cursor else None,
        )
        token = encode_page_token(Cursor(*after), fingerprint) if after else ""
        return jobs, token

    async def cancel(self, principal: Principal, job_id: str, reason: str) -> Job:
        """Cancel a queued or running job; cancelling a cancelled job returns it unchanged."""
        # Only for the event's previous_status: a change committed between the two reads
        # has its own event right before ours.
        before = await self._jobs.get(job_id, owner_scope=principal.owner_scope)
        job, changed = await self._jobs.cancel(
            job_id,
            owner_scope=principal.owner_scope,
            reason=reason or "cancelled by request",
            now=self._clock.now(),
        )
        if changed:
            await self._observer.job_changed(job)
            event = JobStatusChanged(
                status=job.status,
                previous_status=before.status if before is not None else None,
                outcome=job.outcome,
                detail=job.outcome_detail,
            )
            await self._events.publish(job.job_id, event)
        return job
