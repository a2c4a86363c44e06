"""Reading and resolving escalations, scoped to the calling principal, and firing deadlines.

A resolve commits the decision with its feed entry, then goes down the change pipeline,
which announces it and tells the runner of the job (on whichever replica) to hand the
agent its answer. The agent itself records the delivery, so it happens once, where the
agent runs, also after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain.changes import RunnerNotice
from cofounder_server.domain.errors import DomainError, NotFound
from cofounder_server.domain.escalations import Escalation, EscalationStatus, Resolution, decision_source
from cofounder_server.domain.model import AgentState, JobStatus
from cofounder_server.domain.pagination import (
    Cursor,
    decode_page_token,
    encode_page_token,
    filter_fingerprint,
    page_size_or_default,
)
from cofounder_server.domain.principal import Principal
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.escalations import Decision, EscalationRepository
from cofounder_server.store.idempotency import request_fingerprint

log = logging.getLogger(__name__)

_ACTING = (AgentState.WAITING_FOR_INPUT, AgentState.WORKING)

DEADLINE_RECHECK_SECONDS = 30.0
"""How often a process looks again for the earliest deadline (escalations raised on other
replicas); deadlines raised here re-plan the timer at once."""


@dataclass(frozen=True)
class ResolveOutcome:
    """A resolve's answer: the escalation, and when its agent acts on the decision."""

    escalation: Escalation
    agent_waiting: bool
    """The agent waits for input now and continues at once."""
    agent_wake_time: datetime | None
    """The agent sleeps on its budget and acts on the answer when it wakes."""


class EscalationService:
    """The escalation use cases. Every call is scoped by the principal in the storage query."""

    def __init__(self, escalations: EscalationRepository, changes: ChangePipeline, clock: Clock) -> None:
        self._escalations = escalations
        self._changes = changes
        self._clock = clock

    async def get(self, principal: Principal, escalation_id: str) -> Escalation:
        """The escalation, or NotFound when it is missing or not the caller's."""
        escalation = await self._escalations.get(escalation_id, owner_scope=principal.owner_scope)
        if escalation is None:
            raise NotFound("escalation", escalation_id)
        return escalation

    async def list(
        self,
        principal: Principal,
        job_id: str,
        statuses: frozenset[EscalationStatus],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Escalation], str]:
        """One page of the caller's escalations, newest first, and the next page's token."""
        size = page_size_or_default(page_size)
        fingerprint = filter_fingerprint(principal.principal_id, job_id, sorted(statuses))
        cursor = decode_page_token(page_token, fingerprint)
        found, after = await self._escalations.list(
            owner_scope=principal.owner_scope,
            job_id=job_id or None,
            statuses=sorted(statuses),
            page_size=size,
            after=(cursor.create_time, cursor.item_id) if cursor else None,
        )
        token = encode_page_token(Cursor(*after), fingerprint) if after else ""
        return found, token

    async def resolve(
        self,
        principal: Principal,
        escalation_id: str,
        resolution: Resolution,
        guidance: str,
        request_id: str,
    ) -> ResolveOutcome:
        """Decide a pending escalation (an option, an answer, or an approval of a tool call
        with its digest and perhaps edited arguments); see ``EscalationRepository.resolve``
        for the errors."""
        chosen = Decision(
            decision=resolution.decision,
            guidance=guidance,
            resolved_by=principal.principal_id,
            source=decision_source(acting_service=principal.acting_service),
            via_service=principal.acting_service or "",
            answer=resolution.answer,
            arguments_digest=resolution.arguments_digest,
            edited_arguments_json=resolution.edited_arguments_json,
        )
        request: dict[str, str] = {
            "escalation_id": escalation_id,
            "decision": resolution.decision,
            "guidance": guidance,
        }
        # Only what a resolve of an option did not have joins the fingerprint: an option's
        # retried request_id matches as it did before.
        for name in ("answer", "arguments_digest", "edited_arguments_json"):
            if getattr(resolution, name):
                request[name] = getattr(resolution, name)
        fingerprint = request_fingerprint(request)
        resolved = await self._escalations.resolve(
            escalation_id,
            chosen,
            owner_scope=principal.owner_scope,
            request_id=request_id,
            fingerprint=fingerprint,
            now=self._clock.now(),
        )
        if resolved.change is not None:  # None: a retry of a resolve already counted
            _count_decided(resolved.escalation)
            await self._changes.committed(resolved.change, RunnerNotice.ANSWERED)
        job = resolved.job
        running = job is not None and job.status is JobStatus.RUNNING
        # Its last answer sets a waiting agent working: it acts on the decision now.
        waiting = running and job is not None and job.agent_state in _ACTING
        sleeping = running and job is not None and job.agent_state is AgentState.SLEEPING
        return ResolveOutcome(resolved.escalation, waiting, job.wake_at if sleeping and job else None)


class DeadlineTimer:
    """Fires escalation deadlines for this process: one timer set to the earliest pending
    deadline (never one per waiting agent). Every replica runs one; the conditional UPDATE
    makes each deadline fire once."""

    def __init__(self, escalations: EscalationRepository, changes: ChangePipeline, clock: Clock) -> None:
        self._escalations = escalations
        self._changes = changes
        self._clock = clock
        self._replan = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the timer (it reads the earliest deadline from SQL, so restarts lose none)."""
        self._task = asyncio.create_task(self._run(), name="escalation-deadlines")

    def raised(self, deadline: datetime | None) -> None:
        """An escalation with ``deadline`` was raised here: plan again if it is earlier."""
        if deadline is not None:
            self._replan.set()

    async def stop(self) -> None:
        """Stop the timer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def fire_due(self) -> int:
        """Decide every escalation whose deadline has passed; how many this process fired."""
        changes = await self._escalations.expire_due(now=self._clock.now())
        for change in changes:
            for escalation in change.escalations:
                _count_decided(escalation)
            await self._changes.committed(change, RunnerNotice.ANSWERED)
        return len(changes)

    async def _run(self) -> None:
        while True:
            self._replan.clear()  # a deadline raised from now on plans the timer again
            try:
                await self.fire_due()
                earliest = await self._escalations.next_deadline()
            except DomainError as error:  # SQL down: try again at the next check
                log.warning("escalation deadlines not checked now: %s", error)
                earliest = None
            except Exception:  # a bug must not stop every deadline of this process
                log.exception("escalation deadline check failed; trying again")
                earliest = None
            now = self._clock.now()
            recheck = now + timedelta(seconds=DEADLINE_RECHECK_SECONDS)
            wake_at = recheck if earliest is None else min(earliest, recheck)
            timer = asyncio.ensure_future(self._clock.sleep_until(wake_at))
            replan = asyncio.ensure_future(self._replan.wait())
            try:
                await asyncio.wait({timer, replan}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                replan.cancel()


def _count_decided(escalation: Escalation) -> None:
    """Count a decision just committed: resolved by its source, or expired."""
    if escalation.status is EscalationStatus.EXPIRED:
        observability.metrics.escalations_expired.inc()
    elif escalation.decision_source is not None:
        observability.metrics.escalations_resolved(escalation.decision_source.value).inc()
