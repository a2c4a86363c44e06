"""Submitting, reading, listing and cancelling jobs, scoped to the calling principal."""

from __future__ import annotations

from cofounder_server.clock import Clock
from cofounder_server.domain.budget import window_start
from cofounder_server.domain.changes import RunnerNotice
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
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.services.submissions import SubmissionWriter
from cofounder_server.store.idempotency import request_fingerprint
from cofounder_server.store.job_creation import JobCreation
from cofounder_server.store.jobs import JobRepository
from cofounder_server.store.runs import RunRepository


class JobService:
    """The job use cases. Every call is scoped by the principal in the storage query.

    Every change commits together with its events, then goes down the change pipeline;
    once SQL has committed, the call succeeds whatever Redis does.
    """

    def __init__(
        self,
        jobs: JobRepository,
        runs: RunRepository,
        changes: ChangePipeline,
        clock: Clock,
        submissions: SubmissionWriter,
    ) -> None:
        """``submissions`` creates the jobs of ``submit`` in group commits."""
        self._jobs = jobs
        self._submissions = submissions
        self._runs = runs
        self._changes = changes
        self._clock = clock

    async def submit(self, principal: Principal, new: NewJob, request_id: str | None) -> Job:
        """Store a queued job; a retried ``request_id`` returns the job it created."""
        # Only a request_id's retries are compared with the request: no key, no fingerprint.
        fingerprint = "" if request_id is None else request_fingerprint(new)
        return await self._submissions.submit(JobCreation(new, request_id, fingerprint))

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

    async def cancel(self, principal: Principal, job_id: str, reason: str, request_id: str = "") -> Job:
        """Cancel a queued or running job; cancelling a cancelled job returns it unchanged. A
        retried ``request_id`` returns the job as it stands; the same ``request_id`` with
        another job or reason is ``AlreadyExists``."""
        change = await self._jobs.cancel(
            job_id,
            owner_scope=principal.owner_scope,
            reason=reason or "cancelled by request",
            request_id=request_id,
            fingerprint=request_fingerprint({"job_id": job_id, "reason": reason}),
            now=self._clock.now(),
        )
        if change.events:
            await self._changes.committed(change, RunnerNotice.CANCELLED)
        assert change.job is not None
        return change.job

    async def wake(self, principal: Principal, job_id: str, request_id: str, top_up: int) -> Job:
        """WakeAgent: add ``top_up`` to today's budget and wake the sleeping agent now.

        Today's spend is kept (the budget window is the UTC day): without a top-up that
        brings spend below 90 % of the raised budget, the agent goes back to sleep until
        midnight at once. A retried ``request_id`` applies its top-up once and returns the
        job as it is. Raises ``NotFound`` and ``FailedPrecondition("AGENT_NOT_SLEEPING")``.
        """
        now = self._clock.now()
        change = await self._runs.wake(
            job_id,
            owner_scope=principal.owner_scope,
            request_id=request_id,
            top_up=top_up,
            window=window_start(now),
            now=now,
        )
        if change.events:  # else a retry of a request that was applied before
            await self._changes.committed(change, RunnerNotice.WOKEN)
        assert change.job is not None
        return change.job
