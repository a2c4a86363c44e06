"""What an agent run reads and records, behind one narrow interface.

A run talks to its :class:`RunStore` only: it never sees a repository, the group-commit
writer or the change pipeline. Every change the store commits goes down the change pipeline
before the call returns, and the store keeps the job as last committed (``job``), so the
run always acts on what SQL says. :class:`RunStores` builds one per run from the process's
repositories.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from cofounder_server import observability
from cofounder_server.clock import Clock
from cofounder_server.domain import budget
from cofounder_server.domain.changes import Change, Spend
from cofounder_server.domain.errors import Unavailable
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.events import AgentWaitingForInput, EventPayload
from cofounder_server.domain.model import AgentState, Job, JobStatus
from cofounder_server.executor.writer import Recorded, RecordWrite, RecordWriter
from cofounder_server.services.changes import ChangePipeline
from cofounder_server.store.checkpoints import CheckpointStore, RunStart
from cofounder_server.store.escalations import EscalationRepository
from cofounder_server.store.events import EventLogRepository
from cofounder_server.store.iterations import Ending, RunRecord
from cofounder_server.store.ledger import LedgerRepository
from cofounder_server.store.runs import RunRepository
from cofounder_server.store.tool_executions import Execution, ToolExecutionRepository

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Pause = Callable[[float], Awaitable[None]]
"""Waits that long unless the run is stopped meanwhile (then raises)."""

_MAX_RETRY_DELAY = 5.0


class Gone(Exception):
    """The job is no longer this runner's running job (cancelled, finished, taken over)."""


class RunStore:
    """One run's reads and records (see the module docstring). Methods that record raise
    :class:`Gone` when the job is no longer this runner's running job."""

    def __init__(self, job: Job, stores: RunStores) -> None:
        self.job = job
        """The job as last committed."""
        self._stores = stores
        self.progress = 0
        """The run's iteration count: orders the summaries written after each model call."""
        self._spend: tuple[datetime, Spend] | None = None

    @property
    def job_id(self) -> str:
        """The run's job."""
        return self.job.job_id

    def knows_spend(self, window: datetime, spend: Spend) -> None:
        """Today's spend as the run last knew it: it rides along with the run's changes
        (their keys are newer than those of the iteration before, whose fan-out may still
        be on its way)."""
        self._spend = (window, spend)

    # --- reads --------------------------------------------------------------------------

    async def start(self, window: datetime) -> RunStart:
        """The job's last checkpoint and the spend of ``window``."""
        return (await self._stores.checkpoints.starts([self.job], window))[self.job_id]

    async def spend(self, window: datetime) -> Spend:
        """The job's spend of ``window`` and that window's budget (top-ups included)."""
        return await self._stores.ledger.spend_of(self.job, window)

    async def still_running(self) -> None:
        """Re-read the job; :class:`Gone` unless it is still running."""
        job = await self._stores.runs.get(self.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            raise Gone
        self.job = job

    # --- records ------------------------------------------------------------------------

    async def record(self, record: RunRecord, pause: Pause) -> Recorded:
        """Commit ``record`` through the group commit, riding out SQL trouble (a record that
        follows a paid model call must not be given up: the run would repeat the call).
        STORED and DEFERRED adopt the committed job; REFUSED raises :class:`Gone`."""
        write = RecordWrite(record, self.job, self._known_spend(), self.progress)
        delay = 0.1
        while True:
            try:
                outcome = await self._stores.writer.write(write)
                break
            except Unavailable as error:
                log.warning("job %s: its record is not committed yet: %s", self.job_id, error)
                await pause(delay)
                delay = min(_MAX_RETRY_DELAY, delay * 2)
                write.done = asyncio.get_running_loop().create_future()
        if outcome is Recorded.REFUSED:
            raise Gone
        self.job = write.committed or self.job
        return outcome

    async def finish(self, ending: Ending, events: Sequence[EventPayload], pause: Pause) -> None:
        """End the job on its own (withdrawing its pending escalations first), riding out SQL
        trouble."""
        stores = self._stores
        change = await self._until_committed(
            "its ending",
            lambda: stores.runs.finish(
                self.job_id,
                stores.runner_id,
                status=ending.status,
                outcome=ending.outcome,
                detail=ending.detail,
                agent_state=ending.agent_state,
                events=events,
                now=stores.clock.now(),
            ),
            pause,
        )
        await self._apply(change)

    async def set_agent_state(
        self, state: AgentState, wake_at: datetime | None, events: Sequence[EventPayload], pause: Pause
    ) -> None:
        """Record the agent's state and wake time with ``events``, riding out SQL trouble."""
        stores = self._stores
        change = await self._until_committed(
            f"its {state.value} state",
            lambda: stores.runs.set_agent_state(
                self.job_id, state=state, wake_at=wake_at, events=events, now=stores.clock.now()
            ),
            pause,
        )
        await self._apply(change)

    async def publish(self, events: Sequence[EventPayload]) -> None:
        """Append events that change nothing else (a retry announced); :class:`Gone` when the
        job is no longer this runner's running job."""
        stores = self._stores
        stored = await stores.runs.announce(self.job_id, stores.runner_id, events, now=stores.clock.now())
        if stored is None:
            raise Gone
        await stores.changes.committed(Change.appended(stored))

    # --- escalations --------------------------------------------------------------------

    async def raise_escalations(self, escalations: Sequence[Escalation]) -> None:
        """Record the escalations (those not stored yet) and set the agent waiting for input."""
        stores = self._stores
        change = await stores.escalations.raise_for(
            self.job_id, stores.runner_id, escalations, now=stores.clock.now()
        )
        if change is None:
            raise Gone
        for stored in change.escalations:  # only those stored now: a retry raises none again
            observability.metrics.escalations_raised(stored.trigger.value).inc()
        await self._apply(change)
        for escalation in escalations:
            stores.deadline_raised(escalation.deadline)

    async def take_answers(self, escalation_ids: Sequence[str]) -> tuple[list[Escalation], bool]:
        """The escalations as they stand, and whether their answers were delivered now (all
        decided: marked delivered and the agent set working, in one transaction)."""
        stores = self._stores
        decided, change = await stores.escalations.deliver(
            self.job_id, stores.runner_id, escalation_ids, now=stores.clock.now()
        )
        if change is not None:
            await self._apply(change)
        return decided, change is not None

    async def start_tool_call(self, escalation: Escalation, pause: Pause) -> Execution:
        """Take an approved call to ``running`` (committed) unless a run did already; where
        its execution stands. Rides out SQL trouble: the call must not run uncommitted.
        :class:`Gone` when the job no longer runs here: the call does not start."""
        stores = self._stores
        execution = await self._until_committed(
            "the start of an approved call",
            lambda: stores.tool_executions.start(escalation, stores.runner_id, now=stores.clock.now()),
            pause,
        )
        if execution is None:
            raise Gone
        return execution

    async def finish_tool_call(
        self, escalation: Escalation, result: str, is_error: bool, events: list[EventPayload], pause: Pause
    ) -> None:
        """Keep an approved call's result with its events (once)."""
        stores = self._stores
        change = await self._until_committed(
            "an approved call's result",
            lambda: stores.tool_executions.finish(
                self.job_id,
                stores.runner_id,
                escalation.escalation_id,
                (result, is_error),
                events,
                now=stores.clock.now(),
            ),
            pause,
        )
        if change is not None:
            await stores.changes.committed(change)

    async def waiting_again(self, pending: Sequence[str], pause: Pause) -> None:
        """The agent woke (its budget window reset) while escalations are still pending: it
        waits for input again."""
        await self.set_agent_state(
            AgentState.WAITING_FOR_INPUT, None, [AgentWaitingForInput(e) for e in pending], pause
        )

    # --- helpers ------------------------------------------------------------------------

    async def _until_committed(self, what: str, transition: Callable[[], Awaitable[_T]], pause: Pause) -> _T:
        """Commit a transition that follows a committed iteration, riding out SQL trouble (a
        busy database, a PostgreSQL failover): giving up would redo the run from its
        checkpoint and repeat a model call that was paid for."""
        delay = 0.1
        while True:
            try:
                return await transition()
            except Unavailable as error:
                log.warning("job %s: %s not committed yet: %s", self.job_id, what, error)
                await pause(delay)
                delay = min(_MAX_RETRY_DELAY, delay * 2)

    async def _apply(self, change: Change | None) -> None:
        """Adopt a committed change and send it down the change pipeline."""
        if change is None:
            raise Gone
        self.job = change.job or self.job
        await self._stores.changes.committed(
            dataclasses.replace(change, progress=self.progress, spend=self._known_spend())
        )

    def _known_spend(self) -> Spend | None:
        """Today's spend as the run knows it, if it knows today's."""
        known = self._spend
        today = budget.window_start(self._stores.clock.now())
        return known[1] if known is not None and known[0] == today else None


class RunStores:
    """The process's repositories, writer and change pipeline, from which each run gets its
    :class:`RunStore`."""

    def __init__(
        self,
        *,
        runs: RunRepository,
        checkpoints: CheckpointStore,
        ledger: LedgerRepository,
        event_log: EventLogRepository,
        escalations: EscalationRepository,
        writer: RecordWriter,
        changes: ChangePipeline,
        clock: Clock,
        runner_id: str,
        tool_executions: ToolExecutionRepository,
        deadline_raised: Callable[[datetime | None], None] = lambda _: None,
    ) -> None:
        """``deadline_raised`` tells the process's deadline timer of a new escalation's
        deadline."""
        self.runs = runs
        self.checkpoints = checkpoints
        self.ledger = ledger
        self.event_log = event_log
        self.escalations = escalations
        self.writer = writer
        self.changes = changes
        self.clock = clock
        self.runner_id = runner_id
        self.deadline_raised = deadline_raised
        self.tool_executions = tool_executions

    def for_job(self, job: Job) -> RunStore:
        """The store of a run of ``job``."""
        return RunStore(job, self)
