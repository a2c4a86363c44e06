"""What :class:`Client` and :class:`SyncClient` share: settings checks, the request message of
each call, the mapping of responses and the resume bookkeeping of the ``follow_*`` streams.

Nothing here performs I/O; each client sends the messages built here on its own channel.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import grpc
from google.protobuf import json_format

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, event_pb2, job_pb2
from cofounder_client.errors import CofounderError

AUTHORIZATION_HEADER: Final = "authorization"
"""Call metadata key carrying ``Bearer <token>``."""

ON_BEHALF_OF_HEADER: Final = "cofounder-on-behalf-of"
"""Call metadata key naming the end user a trusted backend acts for."""

# gRPC refuses retry policies with more than five attempts.
MAX_RETRIES: Final = 4


@dataclass(frozen=True)
class FleetSnapshot:
    """Every job of a :meth:`Client.follow_jobs` view as its stream (re)started: replace
    whatever the view held with these; changes continue after ``sequence``."""

    statuses: tuple[job_pb2.JobStatusSnapshot, ...]
    sequence: int


@dataclass(frozen=True)
class EscalationResolution:
    """What :meth:`Client.resolve_escalation` returns: the escalation, and when its agent
    acts on the decision."""

    escalation: escalation_pb2.Escalation
    """The escalation after resolution."""
    agent_waiting: bool
    """The agent was waiting for this answer and continues now."""
    agent_wake_time: datetime | None
    """When the agent sleeps on its budget: the time (UTC) it wakes and acts on the answer,
    or earlier if woken. ``None`` when it is not asleep (waiting, or the job has ended)."""


def check_settings(retries: int, timeout: float | None) -> None:
    """Refuse a client's ``retries`` and ``timeout`` outside their ranges."""
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {MAX_RETRIES}, got {retries}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive or None, got {timeout}")


def call_metadata(token: str | None, on_behalf_of: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call of a client with these credentials."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append((AUTHORIZATION_HEADER, f"Bearer {token}"))
    if on_behalf_of:
        metadata.append((ON_BEHALF_OF_HEADER, on_behalf_of))
    return tuple(metadata)


def backoff_delay(failures: int, initial_backoff: float, max_backoff: float) -> float:
    """Seconds to wait before reconnect number ``failures``: exponential, capped, with jitter."""
    # Jitter spreads out the reconnects of many watchers after a server restart.
    return min(max_backoff, initial_backoff * 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0)


# --- AgentControlService -----------------------------------------------------------------


def submit_job(
    *,
    project_id: str,
    goal: str,
    daily_budget_microdollars: int,
    agent: job_pb2.AgentSpec | Mapping[str, Any] | None,
    labels: Mapping[str, str] | None,
    request_id: str | None,
) -> control_pb2.SubmitJobRequest:
    """The request of ``submit_job``; ``ValueError`` for an agent dict that is no ``AgentSpec``."""
    return control_pb2.SubmitJobRequest(
        request_id=_request_id(request_id),
        project_id=project_id,
        goal=goal,
        daily_budget_microdollars=daily_budget_microdollars,
        agent=_agent_spec(agent),
        labels=labels,
    )


def list_jobs(
    *,
    page_size: int,
    page_token: str,
    statuses: Iterable[job_pb2.JobStatus.ValueType],
    project_id: str,
) -> control_pb2.ListJobsRequest:
    """The request of ``list_jobs``."""
    return control_pb2.ListJobsRequest(
        page_size=page_size, page_token=page_token, statuses=statuses, project_id=project_id
    )


def cancel_job(job_id: str, *, reason: str, request_id: str | None) -> control_pb2.CancelJobRequest:
    """The request of ``cancel_job``."""
    return control_pb2.CancelJobRequest(job_id=job_id, request_id=_request_id(request_id), reason=reason)


def wake_agent(
    job_id: str, *, top_up_microdollars: int, request_id: str | None
) -> control_pb2.WakeAgentRequest:
    """The request of ``wake_agent``."""
    return control_pb2.WakeAgentRequest(
        job_id=job_id, request_id=_request_id(request_id), top_up_microdollars=top_up_microdollars
    )


def watch_job_events(job_id: str, *, after_sequence: int | None) -> control_pb2.WatchJobEventsRequest:
    """The request of ``watch_job_events``; ``None`` leaves the cursor unset (live only)."""
    return _after(control_pb2.WatchJobEventsRequest(job_id=job_id), after_sequence)


def watch_jobs(
    *,
    project_id: str,
    statuses: Iterable[job_pb2.JobStatus.ValueType],
    after_sequence: int | None,
) -> control_pb2.WatchJobsRequest:
    """The request of ``watch_jobs``; ``None`` leaves the cursor unset (snapshot first)."""
    return _after(control_pb2.WatchJobsRequest(project_id=project_id, statuses=statuses), after_sequence)


# --- EscalationService -------------------------------------------------------------------


def list_escalations(
    *,
    job_id: str,
    statuses: Iterable[escalation_pb2.EscalationStatus.ValueType],
    page_size: int,
    page_token: str,
) -> escalation_service_pb2.ListEscalationsRequest:
    """The request of ``list_escalations``."""
    return escalation_service_pb2.ListEscalationsRequest(
        job_id=job_id, statuses=statuses, page_size=page_size, page_token=page_token
    )


def resolve_escalation(
    escalation_id: str,
    *,
    decision: str,
    guidance: str,
    request_id: str | None,
    answer: str = "",
    arguments_digest: str = "",
    edited_arguments_json: str = "",
) -> escalation_service_pb2.ResolveEscalationRequest:
    """The request of ``resolve_escalation``."""
    return escalation_service_pb2.ResolveEscalationRequest(
        escalation_id=escalation_id,
        request_id=_request_id(request_id),
        decision=decision,
        guidance=guidance,
        answer=answer,
        arguments_digest=arguments_digest,
        edited_arguments_json=edited_arguments_json,
    )


def resolution(response: escalation_service_pb2.ResolveEscalationResponse) -> EscalationResolution:
    """What ``resolve_escalation`` returns for the server's response."""
    return EscalationResolution(
        escalation=response.escalation,
        agent_waiting=response.agent_waiting,
        agent_wake_time=(
            response.agent_wake_time.ToDatetime(tzinfo=UTC) if response.HasField("agent_wake_time") else None
        ),
    )


def watch_escalations(
    *, job_id: str, after_sequence: int | None
) -> escalation_service_pb2.WatchEscalationsRequest:
    """The request of ``watch_escalations``; ``None`` leaves the cursor unset (live only)."""
    return _after(escalation_service_pb2.WatchEscalationsRequest(job_id=job_id), after_sequence)


# --- resuming streams --------------------------------------------------------------------

Recovery = Literal["raise", "back_off", "relist"]
"""After a stream failed: give up, reconnect after a back-off, or reconnect at once to list again."""


class JobEventsCursor:
    """The resume state of a followed job-event stream across its reconnects.

    Feed it each ``WatchJobEventsResponse`` (:meth:`receive`) and each failure
    (:meth:`recover`); reopen the watch after :attr:`sequence`.
    """

    def __init__(self, after_sequence: int | None) -> None:
        self.sequence = after_sequence
        """The last sequence delivered (or pinned by a live-only snapshot); ``None`` before any."""
        self.failures = 0
        """Consecutive failed connections."""

    def receive(
        self, message: control_pb2.WatchJobEventsResponse
    ) -> Iterator[job_pb2.JobStatusSnapshot | event_pb2.JobEvent]:
        """The snapshot and the new events of one message, advancing the cursor past each."""
        kind = message.WhichOneof("kind")
        if kind != "snapshot":
            # Events or heartbeats mean the stream works; a server failing right after each
            # snapshot keeps counting towards the limit.
            self.failures = 0
        if kind == "snapshot":
            if self.sequence is None:
                # Live-only watch: pin the cursor so a reconnect neither replays history nor
                # skips events published while reconnecting.
                self.sequence = message.snapshot.latest_event_sequence
            yield message.snapshot
        elif kind == "events":
            for event in message.events.events:
                # A resumed stream starts after the cursor; the check guards against a server
                # replaying an event already delivered.
                if self.sequence is not None and event.sequence <= self.sequence:
                    continue
                self.sequence = event.sequence
                yield event

    def recover(self, error: CofounderError, max_reconnects: int) -> Recovery:
        """What to do after the stream failed with ``error``: only ``UNAVAILABLE`` is retried."""
        if error.code != grpc.StatusCode.UNAVAILABLE or self.failures >= max_reconnects:
            return "raise"
        self.failures += 1
        return "back_off"


class FleetCursor:
    """The resume state of a followed fleet view (``WatchJobs``) across its reconnects.

    Call :meth:`connect` as each stream opens, feed it each message (:meth:`receive`) and
    each failure (:meth:`recover`); reopen the watch after :attr:`sequence`.
    """

    def __init__(self) -> None:
        self.sequence: int | None = None
        """The newest change or heartbeat seen; ``None`` to list the fleet first."""
        self.failures = 0
        """Consecutive failed connections."""
        self._pages: list[job_pb2.JobStatusSnapshot] = []

    def connect(self) -> None:
        """Forget snapshot pages of a stream that broke before its last page."""
        self._pages = []

    def receive(
        self, message: control_pb2.WatchJobsResponse
    ) -> Iterator[FleetSnapshot | control_pb2.JobChange]:
        """The completed snapshot or the changes of one message, advancing the cursor."""
        self.failures = 0
        kind = message.WhichOneof("kind")
        if kind == "snapshot":
            self._pages.extend(message.snapshot.statuses)
            if message.snapshot.last:
                self.sequence = message.snapshot.latest_sequence
                snapshot = FleetSnapshot(tuple(self._pages), self.sequence)
                self._pages = []
                yield snapshot
        elif kind == "changes":
            for change in message.changes.changes:
                self.sequence = max(self.sequence or 0, change.sequence)
                yield change
        elif kind == "heartbeat" and self.sequence is not None:
            self.sequence = max(self.sequence, message.heartbeat.latest_sequence)

    def recover(self, error: CofounderError, max_reconnects: int) -> Recovery:
        """What to do after the stream failed with ``error``: ``OUT_OF_RANGE`` (the server no
        longer has the cursor) lists again, ``UNAVAILABLE`` is retried."""
        if error.code == grpc.StatusCode.OUT_OF_RANGE and self.sequence is not None:
            self.sequence = None
            return "relist"
        if error.code != grpc.StatusCode.UNAVAILABLE or self.failures >= max_reconnects:
            return "raise"
        self.failures += 1
        return "back_off"


_Watch = TypeVar(
    "_Watch",
    control_pb2.WatchJobEventsRequest,
    control_pb2.WatchJobsRequest,
    escalation_service_pb2.WatchEscalationsRequest,
)


def _after(request: _Watch, after_sequence: int | None) -> _Watch:
    # The cursor is an optional field: unset and 0 ask for different things.
    if after_sequence is not None:
        request.after_sequence = after_sequence
    return request


def _request_id(request_id: str | None) -> str:
    return str(uuid.uuid4()) if request_id is None else request_id


def _agent_spec(agent: job_pb2.AgentSpec | Mapping[str, Any] | None) -> job_pb2.AgentSpec | None:
    if agent is None or isinstance(agent, job_pb2.AgentSpec):
        return agent
    try:
        return json_format.ParseDict(dict(agent), job_pb2.AgentSpec())
    except json_format.ParseError as error:
        raise ValueError(f"invalid agent spec: {error}") from error
