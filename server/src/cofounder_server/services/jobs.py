"""Submitting, reading, listing and cancelling jobs, scoped to the calling principal."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

from cofounder_server.clock import Clock
from cofounder_server.domain.budget import percent, window_start
from cofounder_server.domain.errors import FailedPrecondition, NotFound, Unavailable
from cofounder_server.domain.events import JobEvent
from cofounder_server.domain.model import AgentState, Job, JobFilter, NewJob
from cofounder_server.domain.pagination import (
    Cursor,
    decode_page_token,
    encode_page_token,
    filter_fingerprint,
    page_size_or_default,
)
from cofounder_server.domain.principal import Principal
from cofounder_server.live.keys import AgentKeys
from cofounder_server.store.executor import ExecutorStore
from cofounder_server.store.idempotency import request_fingerprint
from cofounder_server.store.jobs import JobRepository


class JobObserver(Protocol):
    """Told about every committed change to a job, so live views can follow."""

    async def job_changed(self, job: Job) -> None:
        """React to ``job`` as committed (its ``version`` orders changes)."""
        ...


class EventPublisher(Protocol):
    """Fans out events (``cofounder_server.events.job_events.JobEvents``)."""

    async def announce(self, stored: Sequence[JobEvent]) -> None:
        """Fan out events the caller's transaction committed."""
        ...


class JobRunner(Protocol):
    """The executor, told about changes it must act on."""

    def job_submitted(self, job: Job) -> None:
        """A queued job may be claimed now."""
        ...

    async def job_cancelled(self, job: Job) -> None:
        """Stop the job's agent wherever it runs."""
        ...

    async def job_woken(self, job: Job) -> None:
        """Resume the job's agent wherever it sleeps (the wake is recorded already)."""
        ...


class JobService:
    """The job use cases. Every call is scoped by the principal in the storage query.

    Every status change commits together with its ``job.status_changed`` event, which is
    fanned out after the commit.
    """

    def __init__(
        self,
        jobs: JobRepository,
        observer: JobObserver,
        clock: Clock,
        events: EventPublisher,
        *,
        runner: JobRunner | None = None,
        agents: ExecutorStore | None = None,
        live_keys: AgentKeys | None = None,
    ) -> None:
        self._jobs = jobs
        self._observer = observer
        self._clock = clock
        self._events = events
        self.runner = runner
        self._agents = agents
        self._keys = live_keys

    async def submit(self, principal: Principal, new: NewJob, request_id: str | None) -> Job:
        """Store a queued job; a retried ``request_id`` returns the job it created."""
        stored: list[JobEvent] = []
        job, created = await self._jobs.create(
            new,
            request_id=request_id,
            fingerprint=request_fingerprint(new),
            now=self._clock.now(),
            events_out=stored,
        )
        if created:
            await self._observer.job_changed(job)
            await self._events.announce(stored)
            if self.runner is not None:
                self.runner.job_submitted(job)
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
        stored: list[JobEvent] = []
        job, changed = await self._jobs.cancel(
            job_id,
            owner_scope=principal.owner_scope,
            reason=reason or "cancelled by request",
            now=self._clock.now(),
            events_out=stored,
        )
        if changed:
            await self._observer.job_changed(job)
            await self._events.announce(stored)
            if self.runner is not None:
                await self.runner.job_cancelled(job)
        return job

    async def wake(self, principal: Principal, job_id: str, request_id: str, top_up: int) -> Job:
        """WakeAgent: add ``top_up`` to today's budget and wake the sleeping agent now.

        Today's spend is kept (the budget window is the UTC day): without a top-up that
        brings spend below 90 % of the raised budget, the agent goes back to sleep until
        midnight at once. A retried ``request_id`` applies its top-up once and returns the
        job as it is. Raises ``NotFound`` and ``FailedPrecondition("AGENT_NOT_SLEEPING")``.
        """
        if self._agents is None:
            raise FailedPrecondition("AGENT_NOT_SLEEPING", "this server runs no agents")
        now = self._clock.now()
        job, stored = await self._agents.wake(
            job_id,
            owner_scope=principal.owner_scope,
            request_id=request_id,
            top_up=top_up,
            window=window_start(now),
            now=now,
        )
        if not stored:
            return job  # a retry of a request that was applied before
        await self._observer.job_changed(job)
        await self._events.announce(stored)
        if self._keys is not None:
            with contextlib.suppress(Unavailable):
                await self._keys.clear_wake_at(job_id)
                await self._keys.set_state(job_id, AgentState.WORKING)
                if top_up:
                    # The key otherwise keeps the pre-top-up figure until the next model call.
                    spent, top_ups = await self._agents.budget_of(job_id, window_start(now))
                    await self._keys.set_budget_pct(
                        job_id, percent(spent, job.daily_budget_microdollars + top_ups)
                    )
        if self.runner is not None:
            await self.runner.job_woken(job)
        return job
