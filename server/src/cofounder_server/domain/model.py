"""Domain values for jobs and their live status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cofounder_server.domain.approvals import ToolApprovalPolicy


class JobStatus(StrEnum):
    """Lifecycle of a job as stored in SQL."""

    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.READY, JobStatus.FAILED, JobStatus.CANCELLED)


class JobOutcome(StrEnum):
    """How a finished run ended."""

    COMPLETED = "completed"
    ITERATION_LIMIT = "iteration_limit"
    REPETITION = "repetition"
    MODEL_ERROR = "model_error"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    ESCALATION_LIMIT = "escalation_limit"


class AgentState(StrEnum):
    """Live agent state. The values are the contract of the ``cofounder:agent:{id}:state`` key."""

    WORKING = "working"
    SLEEPING = "sleeping"
    WAITING_FOR_INPUT = "waiting_for_input"
    ERROR = "error"
    BUDGET_EXCEEDED = "budget_exceeded"
    COMPLETED = "completed"


@dataclass(frozen=True)
class AgentSpec:
    """Which brain runs a job, with which model and settings."""

    brain: str
    model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    tool_approval: ToolApprovalPolicy | None = None
    """Which tool calls wait for a person's approval; ``None``: none do."""


@dataclass(frozen=True)
class NewJob:
    """What a caller asks for when submitting a job."""

    owner_id: str
    project_id: str
    goal: str
    daily_budget_microdollars: int
    agent: AgentSpec
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A stored job. ``version`` increases on every change and orders cached copies."""

    job_id: str
    owner_id: str
    project_id: str
    goal: str
    daily_budget_microdollars: int
    agent: AgentSpec
    labels: dict[str, str]
    status: JobStatus
    outcome: JobOutcome | None
    outcome_detail: str
    agent_state: AgentState | None
    wake_at: datetime | None
    create_time: datetime
    update_time: datetime
    end_time: datetime | None
    version: int
    pending_escalation_ids: tuple[str, ...] = ()
    """Escalations the agent waits on, oldest first."""
    approved_tools: tuple[str, ...] = ()
    """Tools a reviewer approved for the rest of the job: their calls no longer wait."""


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list returns. Empty collections mean "any"."""

    statuses: frozenset[JobStatus] = frozenset()
    project_id: str = ""


@dataclass(frozen=True)
class JobStatusSnapshot:
    """The live view of a job: what a client needs to draw it after a page reload."""

    job_id: str
    job_status: JobStatus
    agent_state: AgentState | None
    wake_at: datetime | None
    budget_percent: int | None
    daily_budget_microdollars: int
    spent_today_microdollars: int
    pending_escalation_ids: tuple[str, ...]
    latest_event_sequence: int
    outcome: JobOutcome | None
    live_state_unavailable: bool = False
    """Redis could not be read: the view is the durable record's alone."""


class JobChangeKind(StrEnum):
    """How a change of a job stands to a fleet watch's filter."""

    ENTERED = "entered"
    """The job is in the view now and the stream had not shown it (new, or newly matching)."""
    UPDATED = "updated"
    """The job was in the view and still is."""
    LEFT = "left"
    """The job no longer matches the filter."""
