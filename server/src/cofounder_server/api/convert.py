"""Mapping between domain values and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from cofounder.agent.v1 import (
    agent_control_service_pb2,
    escalation_pb2,
    escalation_service_pb2,
    event_pb2,
    job_pb2,
)
from cofounder_server.domain.approvals import ApprovalTimeout, ToolApprovalPolicy
from cofounder_server.domain.escalations import (
    AnswerKind,
    DecisionSource,
    Escalation,
    EscalationStatus,
    EscalationTrigger,
)
from cofounder_server.domain.events import (
    AgentBudgetExceeded,
    AgentBudgetUpdated,
    AgentBuildPaused,
    AgentEscalationRaised,
    AgentEscalationResolved,
    AgentEscalationWithdrawn,
    AgentRetrying,
    AgentSleeping,
    AgentThinking,
    AgentToolApprovalRequested,
    AgentToolApproved,
    AgentToolCalled,
    AgentToolRejected,
    AgentWaitingForInput,
    AgentWaking,
    EscalationEvent,
    EscalationEventKind,
    EventPayload,
    JobEvent,
    JobStatusChanged,
    PhaseCompleted,
    PhaseStarted,
    SleepReason,
    WakeReason,
)
from cofounder_server.domain.model import (
    AgentSpec,
    AgentState,
    Job,
    JobChangeKind,
    JobOutcome,
    JobStatus,
    JobStatusSnapshot,
)
from cofounder_server.events.feed import Heartbeat
from cofounder_server.events.hub import EventBatch
from cofounder_server.services.escalation_feed import EscalationWatchItem
from cofounder_server.services.fleet_feed import FleetChangeBatch, FleetSnapshotPage, FleetWatchItem
from cofounder_server.services.job_feed import JobWatchItem

JOB_STATUS_TO_PROTO: dict[JobStatus, job_pb2.JobStatus.ValueType] = {
    JobStatus.QUEUED: job_pb2.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: job_pb2.JOB_STATUS_RUNNING,
    JobStatus.READY: job_pb2.JOB_STATUS_READY,
    JobStatus.FAILED: job_pb2.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: job_pb2.JOB_STATUS_CANCELLED,
}
JOB_STATUS_FROM_PROTO = {v: k for k, v in JOB_STATUS_TO_PROTO.items()}

JOB_OUTCOME_TO_PROTO: dict[JobOutcome, job_pb2.JobOutcome.ValueType] = {
    JobOutcome.COMPLETED: job_pb2.JOB_OUTCOME_COMPLETED,
    JobOutcome.ITERATION_LIMIT: job_pb2.JOB_OUTCOME_ITERATION_LIMIT,
    JobOutcome.REPETITION: job_pb2.JOB_OUTCOME_REPETITION,
    JobOutcome.MODEL_ERROR: job_pb2.JOB_OUTCOME_MODEL_ERROR,
    JobOutcome.BUDGET_EXCEEDED: job_pb2.JOB_OUTCOME_BUDGET_EXCEEDED,
    JobOutcome.CANCELLED: job_pb2.JOB_OUTCOME_CANCELLED,
    JobOutcome.ESCALATION_LIMIT: job_pb2.JOB_OUTCOME_ESCALATION_LIMIT,
}

AGENT_STATE_TO_PROTO: dict[AgentState, job_pb2.AgentState.ValueType] = {
    AgentState.WORKING: job_pb2.AGENT_STATE_WORKING,
    AgentState.SLEEPING: job_pb2.AGENT_STATE_SLEEPING,
    AgentState.WAITING_FOR_INPUT: job_pb2.AGENT_STATE_WAITING_FOR_INPUT,
    AgentState.ERROR: job_pb2.AGENT_STATE_ERROR,
    AgentState.BUDGET_EXCEEDED: job_pb2.AGENT_STATE_BUDGET_EXCEEDED,
    AgentState.COMPLETED: job_pb2.AGENT_STATE_COMPLETED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    # Every event is stamped: plain arithmetic is several times cheaper than FromDatetime
    # (which, like this, reads a naive datetime as UTC).
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000
    )


APPROVAL_TIMEOUT_FROM_PROTO: dict[job_pb2.ToolApprovalTimeout.ValueType, ApprovalTimeout] = {
    job_pb2.TOOL_APPROVAL_TIMEOUT_UNSPECIFIED: ApprovalTimeout.REJECT,
    job_pb2.TOOL_APPROVAL_TIMEOUT_REJECT: ApprovalTimeout.REJECT,
    job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE: ApprovalTimeout.APPROVE,
}
APPROVAL_TIMEOUT_TO_PROTO: dict[ApprovalTimeout, job_pb2.ToolApprovalTimeout.ValueType] = {
    ApprovalTimeout.REJECT: job_pb2.TOOL_APPROVAL_TIMEOUT_REJECT,
    ApprovalTimeout.APPROVE: job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE,
}


def tool_approval_from_proto(policy: job_pb2.ToolApprovalPolicy) -> ToolApprovalPolicy:
    """The domain policy of a request (its timeout enum checked by the caller)."""
    return ToolApprovalPolicy(
        tools=tuple(policy.tools),
        deadline_seconds=policy.deadline_seconds,
        on_timeout=APPROVAL_TIMEOUT_FROM_PROTO[policy.on_timeout],
    )


def agent_spec_from_proto(spec: job_pb2.AgentSpec) -> AgentSpec:
    """The domain agent spec of a request."""
    return AgentSpec(
        brain=spec.brain,
        model=spec.model,
        config=json_format.MessageToDict(spec.config),
        tool_approval=tool_approval_from_proto(spec.tool_approval)
        if spec.HasField("tool_approval")
        else None,
    )


def job_to_proto(job: Job, config: struct_pb2.Struct | None = None) -> job_pb2.Job:
    """The API view of a stored job. ``config``: the agent's config as a message, when the
    caller holds it (a SubmitJob request): copying it costs less than building it again."""
    agent = job_pb2.AgentSpec(brain=job.agent.brain, model=job.agent.model, config=config)
    if config is None and job.agent.config:
        agent.config.update(job.agent.config)
    policy = job.agent.tool_approval
    if policy is not None:
        agent.tool_approval.CopyFrom(
            job_pb2.ToolApprovalPolicy(
                tools=policy.tools,
                deadline_seconds=policy.deadline_seconds,
                on_timeout=APPROVAL_TIMEOUT_TO_PROTO[policy.on_timeout],
            )
        )
    message = job_pb2.Job(
        job_id=job.job_id,
        owner_id=job.owner_id,
        project_id=job.project_id,
        goal=job.goal,
        daily_budget_microdollars=job.daily_budget_microdollars,
        agent=agent,
        status=JOB_STATUS_TO_PROTO[job.status],
        outcome=JOB_OUTCOME_TO_PROTO[job.outcome] if job.outcome else job_pb2.JOB_OUTCOME_UNSPECIFIED,
        outcome_detail=job.outcome_detail,
        create_time=timestamp(job.create_time),
        update_time=timestamp(job.update_time),
        labels=job.labels,
        approved_tools=job.approved_tools,
    )
    if job.end_time is not None:
        message.end_time.CopyFrom(timestamp(job.end_time))
    return message


def snapshot_to_proto(snapshot: JobStatusSnapshot) -> job_pb2.JobStatusSnapshot:
    """The API view of a job's live status."""
    message = job_pb2.JobStatusSnapshot(
        job_id=snapshot.job_id,
        job_status=JOB_STATUS_TO_PROTO[snapshot.job_status],
        agent_state=(
            AGENT_STATE_TO_PROTO[snapshot.agent_state]
            if snapshot.agent_state
            else job_pb2.AGENT_STATE_UNSPECIFIED
        ),
        daily_budget_microdollars=snapshot.daily_budget_microdollars,
        spent_today_microdollars=snapshot.spent_today_microdollars,
        pending_escalation_ids=snapshot.pending_escalation_ids,
        latest_event_sequence=snapshot.latest_event_sequence,
        outcome=(
            JOB_OUTCOME_TO_PROTO[snapshot.outcome] if snapshot.outcome else job_pb2.JOB_OUTCOME_UNSPECIFIED
        ),
        live_state_unavailable=snapshot.live_state_unavailable,
    )
    if snapshot.wake_at is not None:
        message.wake_time.CopyFrom(timestamp(snapshot.wake_at))
    if snapshot.budget_percent is not None:
        message.budget_percent = snapshot.budget_percent
    return message


# --- event feeds ----------------------------------------------------------------------

SLEEP_REASON_TO_PROTO: dict[SleepReason, event_pb2.SleepReason.ValueType] = {
    SleepReason.BUDGET_THRESHOLD: event_pb2.SLEEP_REASON_BUDGET_THRESHOLD,
    SleepReason.BUDGET_EXCEEDED: event_pb2.SLEEP_REASON_BUDGET_EXCEEDED,
}

WAKE_REASON_TO_PROTO: dict[WakeReason, event_pb2.WakeReason.ValueType] = {
    WakeReason.SCHEDULED: event_pb2.WAKE_REASON_SCHEDULED,
    WakeReason.REQUESTED: event_pb2.WAKE_REASON_REQUESTED,
}

ESCALATION_STATUS_TO_PROTO: dict[EscalationStatus, escalation_pb2.EscalationStatus.ValueType] = {
    EscalationStatus.PENDING: escalation_pb2.ESCALATION_STATUS_PENDING,
    EscalationStatus.RESOLVED: escalation_pb2.ESCALATION_STATUS_RESOLVED,
    EscalationStatus.WITHDRAWN: escalation_pb2.ESCALATION_STATUS_WITHDRAWN,
    EscalationStatus.EXPIRED: escalation_pb2.ESCALATION_STATUS_EXPIRED,
}

ESCALATION_STATUS_FROM_PROTO = {proto: status for status, proto in ESCALATION_STATUS_TO_PROTO.items()}

DECISION_SOURCE_TO_PROTO: dict[DecisionSource | None, escalation_pb2.DecisionSource.ValueType] = {
    None: escalation_pb2.DECISION_SOURCE_UNSPECIFIED,
    DecisionSource.PERSON: escalation_pb2.DECISION_SOURCE_PERSON,
    DecisionSource.SERVICE: escalation_pb2.DECISION_SOURCE_SERVICE,
    DecisionSource.DEADLINE: escalation_pb2.DECISION_SOURCE_DEADLINE,
}

ESCALATION_TRIGGER_TO_PROTO: dict[EscalationTrigger, escalation_pb2.EscalationTrigger.ValueType] = {
    EscalationTrigger.REPEATED_ERROR: escalation_pb2.ESCALATION_TRIGGER_REPEATED_ERROR,
    EscalationTrigger.UNRETRYABLE_ERROR: escalation_pb2.ESCALATION_TRIGGER_UNRETRYABLE_ERROR,
    EscalationTrigger.AGENT_QUESTION: escalation_pb2.ESCALATION_TRIGGER_AGENT_QUESTION,
    EscalationTrigger.TOOL_APPROVAL: escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL,
}

ANSWER_KIND_TO_PROTO: dict[AnswerKind, escalation_pb2.EscalationAnswerKind.ValueType] = {
    AnswerKind.OPTION: escalation_pb2.ESCALATION_ANSWER_KIND_OPTION,
    AnswerKind.TEXT: escalation_pb2.ESCALATION_ANSWER_KIND_TEXT,
    AnswerKind.VALUE: escalation_pb2.ESCALATION_ANSWER_KIND_VALUE,
}

ESCALATION_EVENT_KIND_TO_PROTO: dict[
    EscalationEventKind, escalation_service_pb2.EscalationEventKind.ValueType
] = {
    EscalationEventKind.RAISED: escalation_service_pb2.ESCALATION_EVENT_KIND_RAISED,
    EscalationEventKind.RESOLVED: escalation_service_pb2.ESCALATION_EVENT_KIND_RESOLVED,
    EscalationEventKind.WITHDRAWN: escalation_service_pb2.ESCALATION_EVENT_KIND_WITHDRAWN,
}


def escalation_to_proto(escalation: Escalation) -> escalation_pb2.Escalation:
    """The API view of an escalation."""
    message = escalation_pb2.Escalation(
        escalation_id=escalation.escalation_id,
        job_id=escalation.job_id,
        owner_id=escalation.owner_id,
        status=ESCALATION_STATUS_TO_PROTO[escalation.status],
        trigger=ESCALATION_TRIGGER_TO_PROTO[escalation.trigger],
        problem=escalation.problem,
        attempts=escalation.attempts,
        recommended_action=escalation.recommended_action,
        options=[
            escalation_pb2.EscalationOption(value=o.value, label=o.label, description=o.description)
            for o in escalation.options
        ],
        error_signature=escalation.error_signature,
        create_time=timestamp(escalation.create_time),
        decision=escalation.decision,
        guidance=escalation.guidance,
        resolved_by=escalation.resolved_by,
        decision_source=DECISION_SOURCE_TO_PROTO[escalation.decision_source],
        resolved_via_service=escalation.resolved_via_service,
        tool_call_id=escalation.tool_call_id,
        tool_name=escalation.tool_name,
        default_option=escalation.default_option,
        answer_kind=ANSWER_KIND_TO_PROTO[escalation.answer_kind],
        answer_schema_json=escalation.answer_schema_json,
        answer_max_chars=escalation.answer_max_chars,
        answer=escalation.answer,
    )
    if escalation.trigger is EscalationTrigger.TOOL_APPROVAL:
        message.tool_call.CopyFrom(
            escalation_pb2.ToolCallReview(
                arguments_json=escalation.arguments_json,
                arguments_digest=escalation.arguments_digest,
                input_schema_json=escalation.input_schema_json,
                approved_arguments_json=escalation.approved_arguments_json,
                edits="\n".join(escalation.edits()),
            )
        )
    if escalation.resolve_time is not None:
        message.resolve_time.CopyFrom(timestamp(escalation.resolve_time))
    if escalation.deadline is not None:
        message.deadline.CopyFrom(timestamp(escalation.deadline))
    return message


def _status_changed(payload: JobStatusChanged) -> event_pb2.JobStatusChanged:
    return event_pb2.JobStatusChanged(
        previous_status=(
            JOB_STATUS_TO_PROTO[payload.previous_status]
            if payload.previous_status
            else job_pb2.JOB_STATUS_UNSPECIFIED
        ),
        status=JOB_STATUS_TO_PROTO[payload.status],
        outcome=JOB_OUTCOME_TO_PROTO[payload.outcome] if payload.outcome else job_pb2.JOB_OUTCOME_UNSPECIFIED,
        detail=payload.detail,
    )


def _payload_to_proto(payload: EventPayload) -> tuple[str, Message]:
    """The ``JobEvent.payload`` oneof field name and message for a domain payload."""
    match payload:
        case AgentThinking():
            return "agent_thinking", event_pb2.AgentThinking(iteration=payload.iteration, text=payload.text)
        case AgentToolCalled():
            return "agent_tool_called", event_pb2.AgentToolCalled(
                iteration=payload.iteration,
                tool_name=payload.tool_name,
                input_json=payload.input_json,
                result=payload.result,
                is_error=payload.is_error,
            )
        case AgentToolApprovalRequested():
            return "agent_tool_approval_requested", event_pb2.AgentToolApprovalRequested(
                escalation_id=payload.escalation_id,
                tool_name=payload.tool_name,
                call_id=payload.call_id,
                arguments_json=payload.arguments_json,
                arguments_digest=payload.arguments_digest,
            )
        case AgentToolApproved():
            return "agent_tool_approved", event_pb2.AgentToolApproved(
                escalation_id=payload.escalation_id,
                tool_name=payload.tool_name,
                call_id=payload.call_id,
                arguments_json=payload.arguments_json,
                edited=payload.edited,
                for_job=payload.for_job,
                approved_by=payload.approved_by,
                decision_source=DECISION_SOURCE_TO_PROTO[payload.decision_source],
            )
        case AgentToolRejected():
            return "agent_tool_rejected", event_pb2.AgentToolRejected(
                escalation_id=payload.escalation_id,
                tool_name=payload.tool_name,
                call_id=payload.call_id,
                message=payload.message,
                rejected_by=payload.rejected_by,
                decision_source=DECISION_SOURCE_TO_PROTO[payload.decision_source],
            )
        case AgentBudgetUpdated():
            return "agent_budget_updated", event_pb2.AgentBudgetUpdated(
                budget_percent=payload.budget_percent,
                spent_today_microdollars=payload.spent_today_microdollars,
                daily_budget_microdollars=payload.daily_budget_microdollars,
                call_cost_microdollars=payload.call_cost_microdollars,
            )
        case AgentSleeping():
            return "agent_sleeping", event_pb2.AgentSleeping(
                wake_time=timestamp(payload.wake_time), reason=SLEEP_REASON_TO_PROTO[payload.reason]
            )
        case AgentWaking():
            return "agent_waking", event_pb2.AgentWaking(
                reason=WAKE_REASON_TO_PROTO[payload.reason], top_up_microdollars=payload.top_up_microdollars
            )
        case AgentBudgetExceeded():
            return "agent_budget_exceeded", event_pb2.AgentBudgetExceeded(
                budget_percent=payload.budget_percent,
                spent_today_microdollars=payload.spent_today_microdollars,
                daily_budget_microdollars=payload.daily_budget_microdollars,
            )
        case AgentRetrying():
            return "agent_retrying", event_pb2.AgentRetrying(
                error_signature=payload.error_signature,
                attempt=payload.attempt,
                max_attempts=payload.max_attempts,
                error_message=payload.error_message,
                next_attempt_time=None
                if payload.next_attempt_time is None
                else timestamp(payload.next_attempt_time),
            )
        case AgentWaitingForInput():
            return "agent_waiting_for_input", event_pb2.AgentWaitingForInput(
                escalation_id=payload.escalation_id
            )
        case AgentEscalationRaised():
            return "agent_escalation_raised", event_pb2.AgentEscalationRaised(
                escalation=escalation_to_proto(payload.escalation)
            )
        case AgentEscalationResolved():
            return "agent_escalation_resolved", event_pb2.AgentEscalationResolved(
                escalation_id=payload.escalation_id,
                decision=payload.decision,
                guidance=payload.guidance,
                resolved_by=payload.resolved_by,
                decision_source=DECISION_SOURCE_TO_PROTO[payload.decision_source],
                resolved_via_service=payload.resolved_via_service,
                delivered=payload.delivered,
            )
        case AgentEscalationWithdrawn():
            return "agent_escalation_withdrawn", event_pb2.AgentEscalationWithdrawn(
                escalation_id=payload.escalation_id, reason=payload.reason
            )
        case AgentBuildPaused():
            return "agent_build_paused", event_pb2.AgentBuildPaused(reason=payload.reason)
        case PhaseStarted():
            return "phase_started", event_pb2.PhaseStarted(phase=payload.phase)
        case PhaseCompleted():
            return "phase_completed", event_pb2.PhaseCompleted(phase=payload.phase)
        case JobStatusChanged():
            return "job_status_changed", _status_changed(payload)


def job_event_to_proto(event: JobEvent) -> event_pb2.JobEvent:
    """The API view of one event of a job's log."""
    message = event_pb2.JobEvent(
        job_id=event.job_id, sequence=event.sequence, type=event.type, time=timestamp(event.time)
    )
    name, payload = _payload_to_proto(event.payload)
    getattr(message, name).CopyFrom(payload)
    return message


def encode_job_event(event: JobEvent) -> bytes:
    """A job event serialised once, as every watcher on every replica receives it."""
    return job_event_to_proto(event).SerializeToString()


def escalation_event_to_proto(event: EscalationEvent) -> escalation_service_pb2.EscalationEvent:
    """The API view of one entry of the escalation feed."""
    return escalation_service_pb2.EscalationEvent(
        sequence=event.sequence,
        type=event.kind.type,
        kind=ESCALATION_EVENT_KIND_TO_PROTO[event.kind],
        time=timestamp(event.time),
        escalation=escalation_to_proto(event.escalation),
    )


def encode_escalation_event(event: EscalationEvent) -> bytes:
    """An escalation feed entry serialised once, for every watcher."""
    return escalation_event_to_proto(event).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field_number: int, data: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(data)) + data


# Both responses carry their batch as field 2, and both batches their events as field 1.
_RESPONSE_BATCH_FIELD = 2
_BATCH_EVENTS_FIELD = 1


def _batch_bytes(batch: EventBatch) -> bytes:
    """``{events: {events: [...]}}`` of a watch response, assembled from the pre-encoded
    events: protobuf's encoding of a repeated message field is the concatenation of its
    elements, so no event is decoded or encoded again."""
    events = b"".join(_length_delimited(_BATCH_EVENTS_FIELD, event.data) for event in batch.events)
    return _length_delimited(_RESPONSE_BATCH_FIELD, events)


def heartbeat_to_proto(heartbeat: Heartbeat) -> event_pb2.Heartbeat:
    """The API view of a heartbeat."""
    return event_pb2.Heartbeat(latest_sequence=heartbeat.latest_sequence, time=timestamp(heartbeat.time))


def watch_job_item_to_proto(item: JobWatchItem) -> agent_control_service_pb2.WatchJobEventsResponse | bytes:
    """One WatchJobEvents message. A batch of events is returned already serialised, once
    for every watcher it goes to (the stream handlers send bytes as they are)."""
    if isinstance(item, EventBatch):
        if not isinstance(item.encoded, bytes):
            item.encoded = _batch_bytes(item)
        return item.encoded
    response = agent_control_service_pb2.WatchJobEventsResponse
    if isinstance(item, Heartbeat):
        return response(heartbeat=heartbeat_to_proto(item))
    return response(snapshot=snapshot_to_proto(item))


def watch_escalation_item_to_proto(
    item: EscalationWatchItem,
) -> escalation_service_pb2.WatchEscalationsResponse | bytes:
    """One WatchEscalations message (a batch of events already serialised)."""
    response = escalation_service_pb2.WatchEscalationsResponse
    if isinstance(item, EventBatch):
        return _batch_bytes(item)
    if isinstance(item, Heartbeat):
        return response(heartbeat=heartbeat_to_proto(item))
    return response(
        snapshot=escalation_service_pb2.EscalationSnapshot(
            pending=[escalation_to_proto(e) for e in item.pending], latest_sequence=item.latest_sequence
        )
    )


def encode_status(snapshot: JobStatusSnapshot) -> bytes:
    """A job's status as the fleet feed sends it (a ``JobStatusSnapshot`` message)."""
    return snapshot_to_proto(snapshot).SerializeToString()


JOB_CHANGE_KIND_TO_PROTO: dict[JobChangeKind, agent_control_service_pb2.JobChangeKind.ValueType] = {
    JobChangeKind.ENTERED: agent_control_service_pb2.JOB_CHANGE_KIND_ENTERED,
    JobChangeKind.UPDATED: agent_control_service_pb2.JOB_CHANGE_KIND_UPDATED,
    JobChangeKind.LEFT: agent_control_service_pb2.JOB_CHANGE_KIND_LEFT,
}

_CHANGE_SEQUENCE_FIELD = 1
_CHANGE_KIND_FIELD = 2
_CHANGE_STATUS_FIELD = 3
_BATCH_CHANGES_FIELD = 1
_RESPONSE_CHANGES_FIELD = 2


def _changes_bytes(batch: FleetChangeBatch) -> bytes:
    """``{changes: {changes: [...]}}`` of a WatchJobs response around the statuses as the
    fleet entries carry them encoded (shared by every watcher, never decoded here)."""
    changes = b"".join(
        _length_delimited(
            _BATCH_CHANGES_FIELD,
            _varint(_CHANGE_SEQUENCE_FIELD << 3)
            + _varint(change.sequence)
            + _varint(_CHANGE_KIND_FIELD << 3)
            + _varint(JOB_CHANGE_KIND_TO_PROTO[change.kind])
            + _length_delimited(_CHANGE_STATUS_FIELD, change.status),
        )
        for change in batch.changes
    )
    return _length_delimited(_RESPONSE_CHANGES_FIELD, changes)


def watch_jobs_item_to_proto(item: FleetWatchItem) -> agent_control_service_pb2.WatchJobsResponse | bytes:
    """One WatchJobs message (a batch of changes assembled as bytes)."""
    if isinstance(item, FleetChangeBatch):
        return _changes_bytes(item)
    response = agent_control_service_pb2.WatchJobsResponse
    if isinstance(item, Heartbeat):
        return response(heartbeat=heartbeat_to_proto(item))
    assert isinstance(item, FleetSnapshotPage)
    return response(
        snapshot=agent_control_service_pb2.JobStatusPage(
            statuses=[snapshot_to_proto(status) for status in item.statuses],
            last=item.last,
            latest_sequence=item.latest_sequence,
        )
    )
