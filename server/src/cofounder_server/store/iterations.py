"""What a group commit of agent iterations takes and gives back (both SQL paths), and the one
place that turns an iteration into table rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cofounder_server.domain.events import EventPayload, JobEvent


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
class IterationRecord:
    """One iteration of one job to make durable."""

    job_id: str
    iteration: int
    """Numbers the job's model calls from 1."""
    call: ModelCall
    """Recorded whenever the job is still this runner's (the call was paid for)."""
    new_messages: Sequence[Mapping[str, Any]]
    """The conversation's messages added by this iteration (JSON values), in order."""
    first_position: int
    """The position of the first new message in the conversation."""
    loop_state: Mapping[str, Any]
    """The loop's counters and guards after the iteration (a JSON object)."""
    time: datetime
    events: Sequence[EventPayload]


@dataclass(frozen=True)
class IterationRows:
    """An iteration as rows: usage ledger, new checkpoint messages, checkpoint head."""

    ledger: dict[str, Any]
    messages: list[dict[str, Any]]
    head: dict[str, Any]


def rows_of(record: IterationRecord) -> IterationRows:
    """The rows of ``record``, keyed by column name (both group commit paths insert these)."""
    job_id = record.job_id
    call = record.call
    return IterationRows(
        ledger={
            "job_id": job_id,
            "iteration": record.iteration,
            "window_start": call.window_start,
            "model": call.model,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cost_microdollars": call.cost_microdollars,
            "time": record.time,
        },
        messages=[
            {"job_id": job_id, "position": record.first_position + offset, "message": dict(message)}
            for offset, message in enumerate(record.new_messages)
        ],
        head={
            "job_id": job_id,
            "iteration": record.iteration,
            "message_count": record.first_position + len(record.new_messages),
            "state": dict(record.loop_state),
            "update_time": record.time,
        },
    )


class IterationConflict(Exception):
    """An iteration of a group commit was recorded before (by another runner): nothing of
    the batch is stored."""


@dataclass(frozen=True)
class CommittedBatch:
    """What a group commit stored: the jobs whose iterations were accepted, their events."""

    accepted: set[str]
    events: list[JobEvent]
