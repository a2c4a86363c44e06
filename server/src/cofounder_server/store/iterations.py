"""What a group commit of agent runs takes and gives back, and the one place that turns an
iteration into table rows.

A run hands the group commit one :class:`RunRecord` at a time: the iteration it just made
(the model call, the conversation's new messages, the loop's state, the events), a
:class:`Transition` of its job that follows from it (the job ends, or the agent parks), or
both. Both halves commit in one transaction for many jobs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from cofounder_server.domain.events import EventPayload, JobEvent
from cofounder_server.domain.model import AgentState, Job, JobOutcome, JobStatus


@dataclass(frozen=True)
class ModelCall:
    """The usage and cost of one model call, as the usage ledger keeps it."""

    window_start: datetime
    """The UTC midnight that opened the budget window the call counts in."""
    model: str
    input_tokens: int
    output_tokens: int
    cost_microdollars: int


@dataclass(frozen=True)
class Iteration:
    """One iteration of a job's loop: its model call and the checkpoint it leaves."""

    number: int
    """Numbers the job's model calls from 1."""
    call: ModelCall
    """Recorded whenever the job is still this runner's (the call was paid for)."""
    new_messages: Sequence[Mapping[str, Any]]
    """The conversation's messages added by this iteration (JSON values), in order."""
    first_position: int
    """The position of the first new message in the conversation."""
    loop_state: Mapping[str, Any]
    """The loop's counters and guards after the iteration (a JSON object)."""
    conversation_bytes: int = 0
    """What the whole conversation weighs after the iteration (``Message.size`` summed)."""


@dataclass(frozen=True)
class Ending:
    """The job ends: its status, outcome and the agent's last state (a ``job.status_changed``
    event follows the record's events). Not for a job with pending escalations, whose
    ending withdraws them first (``RunRepository.finish``)."""

    status: JobStatus
    outcome: JobOutcome
    detail: str
    agent_state: AgentState


@dataclass(frozen=True)
class Parking:
    """The agent parks: it sleeps until ``wake_at``, or waits for input (``wake_at`` None)."""

    agent_state: AgentState
    wake_at: datetime | None


Transition = Ending | Parking
"""A change of the job row committed with a record."""


@dataclass(frozen=True)
class RunRecord:
    """What one run makes durable at once: an iteration, a transition of its job, or both
    (then the transition follows from the iteration and its events come after the
    iteration's)."""

    job_id: str
    time: datetime
    events: Sequence[EventPayload]
    """Appended to the job's log, in order (a transition's ``job.status_changed`` after them)."""
    iteration: Iteration | None = None
    transition: Transition | None = None


LEDGER_COLUMNS = (
    "job_id",
    "iteration",
    "window_start",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_microdollars",
    "time",
)
"""The usage ledger's columns, in the order of :class:`IterationRows` values."""
MESSAGE_COLUMNS = ("job_id", "position", "message")
"""A checkpoint message's columns, in the order of :class:`IterationRows` values."""
HEAD_COLUMNS = ("job_id", "iteration", "message_count", "conversation_bytes", "state", "update_time")
"""A checkpoint head's columns, in the order of :class:`IterationRows` values."""


class IterationRows(NamedTuple):
    """An iteration as rows: usage ledger, new checkpoint messages, checkpoint head (values
    in the order of ``LEDGER_COLUMNS``, ``MESSAGE_COLUMNS``, ``HEAD_COLUMNS``)."""

    ledger: tuple[Any, ...]
    messages: list[tuple[Any, ...]]
    head: tuple[Any, ...]


def rows_of(job_id: str, iteration: Iteration, time: datetime) -> IterationRows:
    """The rows of ``iteration``, as tuples (a group commit makes hundreds at once)."""
    call = iteration.call
    first = iteration.first_position
    return IterationRows(
        (
            job_id,
            iteration.number,
            call.window_start,
            call.model,
            call.input_tokens,
            call.output_tokens,
            call.cost_microdollars,
            time,
        ),
        [
            (job_id, first + offset, _document(message))
            for offset, message in enumerate(iteration.new_messages)
        ],
        (
            job_id,
            iteration.number,
            first + len(iteration.new_messages),
            iteration.conversation_bytes,
            _document(iteration.loop_state),
            time,
        ),
    )


def _document(value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object as the JSON encoder takes it (a dict; other mappings are copied)."""
    return value if isinstance(value, dict) else dict(value)


class IterationConflict(Exception):
    """An iteration of a group commit was recorded before (by another runner): nothing of
    the batch is stored."""


@dataclass(frozen=True)
class CommittedBatch:
    """What a group commit stored.

    ``accepted``: the jobs whose records were stored (still this runner's running jobs);
    ``events``: their stored events; ``jobs``: the jobs as committed by a transition;
    ``deferred``: accepted jobs whose ending was not applied because they have pending
    escalations (their run ends them on its own); ``pending``: the accepted jobs' pending
    escalation ids as stored (a run's copy of its job may predate a decision made elsewhere).
    """

    accepted: set[str]
    events: list[JobEvent]
    jobs: dict[str, Job] = field(default_factory=dict)
    deferred: set[str] = field(default_factory=set)
    pending: dict[str, tuple[str, ...]] = field(default_factory=dict)
