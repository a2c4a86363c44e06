"""Mapping between domain values and protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import json_format, timestamp_pb2

from cofounder.agent.v1 import job_pb2
from cofounder_server.domain.model import (
    AgentSpec,
    AgentState,
    Job,
    JobOutcome,
    JobStatus,
    JobStatusSnapshot,
)

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
}

AGENT_STATE_TO_PROTO: dict[AgentState, job_pb2.AgentState.ValueType] = {
    AgentState.WORKING: job_pb2.AGENT_STATE_WORKING,
    AgentState.SLEEPING: job_pb2.AGENT_STATE_SLEEPING,
    AgentState.WAITING_FOR_INPUT: job_pb2.AGENT_STATE_WAITING_FOR_INPUT,
    AgentState.ERROR: job_pb2.AGENT_STATE_ERROR,
    AgentState.BUDGET_EXCEEDED: job_pb2.AGENT_STATE_BUDGET_EXCEEDED,
    AgentState.COMPLETED: job_pb2.AGENT_STATE_COMPLETED,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def agent_spec_from_proto(spec: job_pb2.AgentSpec) -> AgentSpec:
    """The domain agent spec of a request."""
    return AgentSpec(brain=spec.brain, model=spec.model, config=json_format.MessageToDict(spec.config))


def job_to_proto(job: Job) -> job_pb2.Job:
    """The API view of a stored job."""
    agent = job_pb2.AgentSpec(brain=job.agent.brain, model=job.agent.model)
    if job.agent.config:
        agent.config.update(job.agent.config)
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
    )
    if snapshot.wake_at is not None:
        message.wake_time.CopyFrom(timestamp(snapshot.wake_at))
    if snapshot.budget_percent is not None:
        message.budget_percent = snapshot.budget_percent
    return message
