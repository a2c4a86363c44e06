"""A committed change: what one SQL transaction did to a job, as everything downstream needs it.

Every store mutation returns one (of jobs, runs, iterations and escalations alike);
:class:`~cofounder_server.services.changes.ChangePipeline` turns it into the live keys, the
fan-out of its events and the runner's notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cofounder_server.domain import budget
from cofounder_server.domain.escalations import Escalation
from cofounder_server.domain.events import EscalationEvent, JobEvent
from cofounder_server.domain.model import AgentState, Job, JobStatusSnapshot


@dataclass(frozen=True)
class Spend:
    """Today's spend of a job and today's budget (the daily budget plus today's top-ups), in
    microdollars, as of a change."""

    spent: int
    budget: int

    @property
    def percent(self) -> int:
        """The ``budget_pct`` figure: spend as a whole percentage of the budget, 0..100."""
        return budget.shown_percent(self.spent, self.budget)


def opening_spend(job: Job) -> Spend | None:
    """Today's spend of a job not changed since it was created (version 1): nothing, of its
    daily budget, since model calls and top-ups come only after changes (a claim, a sleep).
    ``None`` for any later version: then the ledger knows."""
    return Spend(0, job.daily_budget_microdollars) if job.version == 1 else None


class RunnerNotice(StrEnum):
    """What the executor must act on after a change (on whichever replica runs the job)."""

    SUBMITTED = "submitted"
    CANCELLED = "cancelled"
    WOKEN = "woken"
    ANSWERED = "answered"
    """An escalation the agent waits on was decided."""


@dataclass(frozen=True)
class Change:
    """A committed change of one job.

    ``job`` is the job as committed (``None`` when the transaction only appended events);
    ``events`` are the events it appended, with their sequences. ``spend`` is today's spend
    when the change knows it (a recorded model call, a top-up). ``progress`` is the
    executor's iteration count, which orders summaries written after every model call
    within one job version. An ``iteration`` change recorded a model call and left the job
    row as it was: the agent's state keys stay as the last job change wrote them. ``feed``
    holds the escalation feed entries the change appended. ``fleet_sequence`` is the change's
    place in the fleet feed (0: not a change of the job's status, e.g. a replayed request).
    """

    job_id: str
    job: Job | None
    events: Sequence[JobEvent] = ()
    spend: Spend | None = None
    progress: int = 0
    iteration: bool = False
    feed: Sequence[EscalationEvent] = ()
    fleet_sequence: int = 0

    @classmethod
    def of(
        cls,
        job: Job,
        events: Sequence[JobEvent] = (),
        *,
        spend: Spend | None = None,
        progress: int = 0,
        iteration: bool = False,
        feed: Sequence[EscalationEvent] = (),
    ) -> Change:
        """The change that committed ``job`` (and ``events`` and ``feed`` entries with it); its
        fleet sequence is the one its events' append stamped."""
        fleet = max((event.fleet_sequence for event in events), default=0)
        return cls(job.job_id, job, tuple(events), spend, progress, iteration, tuple(feed), fleet)

    @classmethod
    def appended(cls, events: Sequence[JobEvent]) -> Change:
        """Events appended to one job's log without changing the job."""
        if not events:
            raise ValueError("an events-only change needs at least one event")
        return cls(events[0].job_id, None, events)

    @property
    def last_sequence(self) -> int:
        """The newest sequence the change appended (0 when it appended none)."""
        return self.events[-1].sequence if self.events else 0

    @property
    def escalations(self) -> tuple[Escalation, ...]:
        """The escalations the change raised or decided, as committed (its feed entries')."""
        return tuple(entry.escalation for entry in self.feed)


LIVE_AGENT_STATES = frozenset({AgentState.WORKING, AgentState.SLEEPING, AgentState.WAITING_FOR_INPUT})
"""States of an agent that is still on the job."""


def status_of(job: Job, spend: Spend, latest_event_sequence: int, now: datetime) -> JobStatusSnapshot:
    """The status view of a committed job from the durable record alone (what the fleet feed
    sends): the stored agent state and wake time, the spend the change knows."""
    agent_state = visible_agent_state(job)
    wake_at = job.wake_at if agent_state is AgentState.SLEEPING else None
    return JobStatusSnapshot(
        job_id=job.job_id,
        job_status=job.status,
        agent_state=agent_state,
        wake_at=wake_at if wake_at is not None and wake_at > now else None,
        budget_percent=spend.percent if spend.spent > 0 else None,
        daily_budget_microdollars=spend.budget,
        spent_today_microdollars=spend.spent,
        pending_escalation_ids=job.pending_escalation_ids,
        latest_event_sequence=latest_event_sequence,
        outcome=job.outcome,
    )


def visible_agent_state(job: Job) -> AgentState | None:
    """The agent state a reader should see for ``job``: a finished job's agent is never
    working, sleeping or waiting, whatever its last recorded state."""
    if job.status.is_terminal and job.agent_state in LIVE_AGENT_STATES:
        return None
    return job.agent_state
