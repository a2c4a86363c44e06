"""Typed domain events. The API maps them to protobuf; SQL stores them as JSON.

Every payload class names its legacy Server-Sent-Events ``type`` (``TYPE``), which existing
consumers switch on. Field names follow the API's message fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from cofounder_server.domain.escalations import DecisionSource, Escalation
from cofounder_server.domain.model import JobOutcome, JobStatus
from cofounder_server.jsontext import Encoded, encode_object


class SleepReason(StrEnum):
    """Why an agent went to sleep."""

    BUDGET_THRESHOLD = "budget_threshold"
    BUDGET_EXCEEDED = "budget_exceeded"


class WakeReason(StrEnum):
    """Why an agent woke."""

    SCHEDULED = "scheduled"
    REQUESTED = "requested"


class EscalationEventKind(StrEnum):
    """What happened to an escalation; the value is stored in the escalation feed."""

    RAISED = "raised"
    RESOLVED = "resolved"
    WITHDRAWN = "withdrawn"

    @property
    def type(self) -> str:
        """The legacy event name."""
        return _ESCALATION_EVENT_TYPES[self]


_ESCALATION_EVENT_TYPES = {
    EscalationEventKind.RAISED: "agent.escalation_raised",
    EscalationEventKind.RESOLVED: "agent.escalation_resolved",
    EscalationEventKind.WITHDRAWN: "agent.escalation_withdrawn",
}


@dataclass(frozen=True)
class AgentThinking:
    """The agent produced text while deciding its next step."""

    TYPE: ClassVar[str] = "agent.thinking"
    iteration: int
    text: str


@dataclass(frozen=True)
class AgentToolCalled:
    """The agent called a tool and observed its result."""

    TYPE: ClassVar[str] = "agent.tool.called"
    iteration: int
    tool_name: str
    input_json: str = ""
    result: str = ""
    is_error: bool = False


@dataclass(frozen=True)
class AgentToolApprovalRequested:
    """A tool call waits for a person's approval; it has not run."""

    TYPE: ClassVar[str] = "agent.tool.approval_requested"
    escalation_id: str
    tool_name: str
    call_id: str
    arguments_json: str
    arguments_digest: str


@dataclass(frozen=True)
class AgentToolApproved:
    """A tool call waiting for approval was approved; it runs once, with ``arguments_json``."""

    TYPE: ClassVar[str] = "agent.tool.approved"
    escalation_id: str
    tool_name: str
    call_id: str
    arguments_json: str
    edited: bool = False
    for_job: bool = False
    approved_by: str = ""
    decision_source: DecisionSource | None = None


@dataclass(frozen=True)
class AgentToolRejected:
    """A tool call waiting for approval was rejected (by a person or the deadline): it never
    runs."""

    TYPE: ClassVar[str] = "agent.tool.rejected"
    escalation_id: str
    tool_name: str
    call_id: str
    message: str
    rejected_by: str = ""
    decision_source: DecisionSource | None = None


@dataclass(frozen=True)
class AgentBudgetUpdated:
    """A model call was recorded in the usage ledger."""

    TYPE: ClassVar[str] = "agent.budget_updated"
    budget_percent: int
    spent_today_microdollars: int
    daily_budget_microdollars: int
    call_cost_microdollars: int


@dataclass(frozen=True)
class AgentSleeping:
    """The agent sleeps until ``wake_time``."""

    TYPE: ClassVar[str] = "agent.sleeping"
    wake_time: datetime
    reason: SleepReason


@dataclass(frozen=True)
class AgentWaking:
    """The agent woke and continues where it stopped."""

    TYPE: ClassVar[str] = "agent.waking"
    reason: WakeReason
    top_up_microdollars: int = 0


@dataclass(frozen=True)
class AgentBudgetExceeded:
    """A runaway call took spend past 110 % of the daily budget."""

    TYPE: ClassVar[str] = "agent.budget_exceeded"
    budget_percent: int
    spent_today_microdollars: int
    daily_budget_microdollars: int


@dataclass(frozen=True)
class AgentRetrying:
    """An error occurred and the agent will try again."""

    TYPE: ClassVar[str] = "agent.retrying"
    error_signature: str
    attempt: int
    max_attempts: int
    """0: the provider asked to slow down (not counted as a failure)."""
    error_message: str = ""
    next_attempt_time: datetime | None = None


@dataclass(frozen=True)
class AgentWaitingForInput:
    """The agent is blocked until a human resolves an escalation."""

    TYPE: ClassVar[str] = "agent.waiting_for_input"
    escalation_id: str


@dataclass(frozen=True)
class AgentEscalationRaised:
    """The agent raised an escalation."""

    TYPE: ClassVar[str] = "agent.escalation_raised"
    escalation: Escalation


@dataclass(frozen=True)
class AgentEscalationResolved:
    """An escalation was decided and the decision delivered to the agent as its tool result."""

    TYPE: ClassVar[str] = "agent.escalation_resolved"
    escalation_id: str
    decision: str
    guidance: str = ""
    resolved_by: str = ""
    decision_source: DecisionSource | None = None
    resolved_via_service: str = ""
    delivered: str = ""
    """What the agent was told, as its tool call's result."""


@dataclass(frozen=True)
class AgentEscalationWithdrawn:
    """A pending escalation was withdrawn because its job ended."""

    TYPE: ClassVar[str] = "agent.escalation_withdrawn"
    escalation_id: str
    reason: str = ""


@dataclass(frozen=True)
class AgentBuildPaused:
    """The build paused (waiting for input or budget) without ending the job."""

    TYPE: ClassVar[str] = "agent.build_paused"
    reason: str


@dataclass(frozen=True)
class PhaseStarted:
    """The agent opened a named phase of work."""

    TYPE: ClassVar[str] = "gsd.phase.started"
    phase: str


@dataclass(frozen=True)
class PhaseCompleted:
    """The agent closed a named phase of work."""

    TYPE: ClassVar[str] = "gsd.phase.completed"
    phase: str


@dataclass(frozen=True)
class JobStatusChanged:
    """The job's lifecycle status changed. A terminal ``status`` ends every watch of the job."""

    TYPE: ClassVar[str] = "job.status_changed"
    status: JobStatus
    previous_status: JobStatus | None = None
    outcome: JobOutcome | None = None
    detail: str = ""


EventPayload = (
    AgentThinking
    | AgentToolCalled
    | AgentToolApprovalRequested
    | AgentToolApproved
    | AgentToolRejected
    | AgentBudgetUpdated
    | AgentSleeping
    | AgentWaking
    | AgentBudgetExceeded
    | AgentRetrying
    | AgentWaitingForInput
    | AgentEscalationRaised
    | AgentEscalationResolved
    | AgentEscalationWithdrawn
    | AgentBuildPaused
    | PhaseStarted
    | PhaseCompleted
    | JobStatusChanged
)
"""Anything that can be published to a job's event log."""

PAYLOAD_TYPES: dict[str, type[EventPayload]] = {cls.TYPE: cls for cls in typing.get_args(EventPayload)}
"""Payload class by legacy event name."""


def is_terminal(payload: EventPayload) -> bool:
    """Whether ``payload`` is the last event of its job (a change to a terminal status)."""
    return isinstance(payload, JobStatusChanged) and payload.status.is_terminal


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log: ``sequence`` is 1, 2, 3, ... per job, without holes."""

    job_id: str
    sequence: int
    time: datetime
    payload: EventPayload
    fleet_sequence: int = dataclasses.field(default=0, compare=False)
    """The fleet feed sequence of the change that appended the event (0 when the append was
    not a change of the job's status, and for events read back from the log)."""

    @property
    def type(self) -> str:
        """The legacy event name, e.g. ``agent.thinking``."""
        return self.payload.TYPE


@dataclass(frozen=True)
class EscalationEvent:
    """One entry of the escalation feed: ``sequence`` orders the feed across all owners."""

    sequence: int
    kind: EscalationEventKind
    time: datetime
    escalation: Escalation


# --- JSON form (the SQL column) ---------------------------------------------------------


_PLAIN = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_json(value: Any) -> Any:
    """A JSON-compatible form of a payload or escalation (enums by value, times in ISO-8601)."""
    # Every iteration of every job stores several payloads: field names are looked up once
    # per class, and plain values are returned before any other check.
    if isinstance(value, _PLAIN) and not isinstance(value, StrEnum):
        return value
    names = _FIELD_NAMES.get(type(value))
    if names is not None:
        return {name: to_json(getattr(value, name)) for name in names}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
        return to_json(value)
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    return value


def payload_json(payload: EventPayload) -> Encoded:
    """A payload's :func:`to_json` form as JSON text, written in one call (every iteration
    stores several payloads)."""
    return encode_object(payload, to_json)


def payload_from_json(event_type: str, body: dict[str, Any]) -> EventPayload:
    """The payload stored as ``body`` for ``event_type``; ``ValueError`` for unknown types."""
    cls = PAYLOAD_TYPES.get(event_type)
    if cls is None:
        raise ValueError(f"unknown event type {event_type!r}")
    return typing.cast(EventPayload, _from_json(cls, body))


def escalation_from_json(body: dict[str, Any]) -> Escalation:
    """The escalation stored as ``body``."""
    return typing.cast(Escalation, _from_json(Escalation, body))


def _from_json(hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if raw is None:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _from_json(inner, raw)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_from_json(item, value) for value in raw)
    if isinstance(hint, type):
        if issubclass(hint, StrEnum):
            return hint(raw)
        if issubclass(hint, datetime):
            return datetime.fromisoformat(raw)
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            return hint(
                **{
                    f.name: _from_json(hints[f.name], raw[f.name])
                    for f in dataclasses.fields(hint)
                    if f.name in raw
                }
            )
    return raw
