"""What a group commit of agent iterations takes and gives back (both SQL paths)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cofounder_server.domain.events import EventPayload, JobEvent


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of one job to make durable."""

    job_id: str
    ledger: Mapping[str, Any] | None
    """The usage ledger row (recorded whenever the job is still this runner's)."""
    messages: Sequence[Mapping[str, Any]]
    """New checkpoint_messages rows."""
    head: Mapping[str, Any]
    """The checkpoints row."""
    events: Sequence[EventPayload]


@dataclass(frozen=True)
class CommittedBatch:
    """What a group commit stored: the jobs whose iterations were accepted, their events."""

    accepted: set[str]
    events: list[JobEvent]
