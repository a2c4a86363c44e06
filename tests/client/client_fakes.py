"""Small in-memory servicers the client tests run on a real ``grpc.aio`` server.

They play the server's part of the contract (rich error details, paging, idempotent request
ids, numbered event streams with snapshots and heartbeats) and record what arrived: request,
metadata and remaining deadline of every call, so tests can check what the client sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import agent_control_service_pb2_grpc as control_grpc
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, event_pb2, job_pb2
from cofounder.agent.v1 import escalation_service_pb2_grpc as escalation_grpc

_T = TypeVar("_T")

ERROR_DOMAIN = "cofounder.dev"

# Deadline of every unary test RPC (the clients' default) and bound of every stream consumed.
RPC_TIMEOUT = 5.0


async def drain(stream: AsyncIterator[_T], into: list[_T] | None = None) -> None:
    """Consume ``stream`` (into ``into``), failing the test if it takes longer than RPC_TIMEOUT."""
    async with asyncio.timeout(RPC_TIMEOUT):
        async for item in stream:
            if into is not None:
                into.append(item)


def rich_status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A gRPC status carrying ``details`` the way the real server sends them."""
    status = status_pb2.Status(code=code_pb2.Code.Value(code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


@dataclass
class Recorded:
    """One call as the server saw it."""

    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None
    # Common names of the client certificate, when the client presented one (mutual TLS).
    peer_common_names: list[str]


@dataclass
class WatchPlan:
    """How WatchJobEvents behaves for one job.

    The job's log holds ``events``; a watcher without cursor starts after
    ``snapshot_sequence``. ``drops`` says, per connection in order, after how many delivered
    events the server aborts with UNAVAILABLE (later connections deliver to the end).
    ``end_error`` aborts the stream with that status after the log instead of ending OK;
    ``hang`` keeps it open (idle) after the log until the client cancels.
    """

    events: list[event_pb2.JobEvent]
    snapshot_sequence: int = 0
    drops: list[int] = field(default_factory=list)
    end_error: grpc.Status | None = None
    hang: bool = False
    heartbeat_after_first: bool = True


class Recorder:
    """Shared bookkeeping of both fake services."""

    def __init__(self) -> None:
        self.calls: list[Recorded] = []
        # Statuses to fail the next calls of a method with, in order.
        self.failures: defaultdict[str, list[grpc.Status]] = defaultdict(list)
        self.stream_cancelled = asyncio.Event()

    def calls_to(self, method: str) -> list[Recorded]:
        return [c for c in self.calls if c.method == method]

    async def record(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {
            key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
        }
        common_names = [name.decode() for name in context.auth_context().get("x509_common_name", [])]
        self.calls.append(Recorded(method, request, metadata, context.time_remaining(), common_names))
        if self.failures[method]:
            await context.abort_with_status(self.failures[method].pop(0))

    def track_stream(self, context: grpc.aio.ServicerContext[Any, Any]) -> Callable[[], None]:
        """Set ``stream_cancelled`` if the call ends before its handler is done; returns "done".

        A watch that idles forever ends only when the client cancels it. (The handler itself
        cannot tell: grpc.aio cancels its task, but ``context.cancelled()`` stays False.)
        """
        finished = False

        def mark_finished() -> None:
            nonlocal finished
            finished = True

        def on_done(_: grpc.aio.ServicerContext[Any, Any]) -> None:
            if not finished:
                self.stream_cancelled.set()

        context.add_done_callback(on_done)
        return mark_finished


def new_job(project_id: str = "proj", goal: str = "goal", **fields: Any) -> job_pb2.Job:
    return job_pb2.Job(
        job_id=str(uuid.uuid4()), owner_id="user-1", project_id=project_id, goal=goal, **fields
    )


def event(job_id: str, sequence: int, text: str = "") -> event_pb2.JobEvent:
    return event_pb2.JobEvent(
        job_id=job_id,
        sequence=sequence,
        type="agent.thinking",
        agent_thinking=event_pb2.AgentThinking(iteration=sequence, text=text or f"step {sequence}"),
    )


class FakeJobs(control_grpc.AgentControlServiceServicer):
    """AgentControlService over a dict of jobs."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.jobs: dict[str, job_pb2.Job] = {}  # insertion order = age, oldest first
        self.by_request_id: dict[str, str] = {}
        self.watch_plans: dict[str, WatchPlan] = {}
        self.watch_connections: defaultdict[str, int] = defaultdict(int)
        self.fleet_connections = 0

    def add(self, job: job_pb2.Job) -> job_pb2.Job:
        self.jobs[job.job_id] = job
        return job

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> job_pb2.Job:
        if job_id not in self.jobs:
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.NOT_FOUND,
                    f"job {job_id} not found",
                    error_info("JOB_NOT_FOUND", job_id=job_id),
                    error_details_pb2.ResourceInfo(
                        resource_type="cofounder.agent.v1.Job", resource_name=job_id
                    ),
                )
            )
        return self.jobs[job_id]

    async def SubmitJob(self, request: Any, context: Any) -> control_pb2.SubmitJobResponse:
        await self.recorder.record("SubmitJob", request, context)
        violations = []
        if not request.goal:
            violations.append(
                error_details_pb2.BadRequest.FieldViolation(field="goal", description="must not be empty")
            )
        if request.daily_budget_microdollars <= 0:
            violations.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field="daily_budget_microdollars", description="must be positive"
                )
            )
        if violations:
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "invalid SubmitJobRequest",
                    error_details_pb2.BadRequest(field_violations=violations),
                    error_info("INVALID_ARGUMENT"),
                )
            )
        if request.request_id in self.by_request_id:
            return control_pb2.SubmitJobResponse(job=self.jobs[self.by_request_id[request.request_id]])
        job = self.add(
            new_job(
                request.project_id,
                request.goal,
                daily_budget_microdollars=request.daily_budget_microdollars,
                agent=request.agent,
                labels=request.labels,
                status=job_pb2.JOB_STATUS_QUEUED,
            )
        )
        if request.request_id:
            self.by_request_id[request.request_id] = job.job_id
        return control_pb2.SubmitJobResponse(job=job)

    async def GetJob(self, request: Any, context: Any) -> control_pb2.GetJobResponse:
        await self.recorder.record("GetJob", request, context)
        return control_pb2.GetJobResponse(job=await self._job(request.job_id, context))

    async def ListJobs(self, request: Any, context: Any) -> control_pb2.ListJobsResponse:
        await self.recorder.record("ListJobs", request, context)
        matching = [
            job
            for job in reversed(self.jobs.values())
            if (not request.statuses or job.status in request.statuses)
            and (not request.project_id or job.project_id == request.project_id)
        ]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 50)
        return control_pb2.ListJobsResponse(
            jobs=matching[start:end], next_page_token=str(end) if end < len(matching) else ""
        )

    async def CancelJob(self, request: Any, context: Any) -> control_pb2.CancelJobResponse:
        await self.recorder.record("CancelJob", request, context)
        job = await self._job(request.job_id, context)
        job.status = job_pb2.JOB_STATUS_CANCELLED
        job.outcome = job_pb2.JOB_OUTCOME_CANCELLED
        job.outcome_detail = request.reason
        return control_pb2.CancelJobResponse(job=job)

    def _snapshot(self, job: job_pb2.Job) -> job_pb2.JobStatusSnapshot:
        plan = self.watch_plans.get(job.job_id)
        return job_pb2.JobStatusSnapshot(
            job_id=job.job_id,
            job_status=job.status,
            agent_state=job_pb2.AGENT_STATE_SLEEPING,
            daily_budget_microdollars=job.daily_budget_microdollars,
            latest_event_sequence=plan.snapshot_sequence if plan else 0,
        )

    async def GetJobStatus(self, request: Any, context: Any) -> control_pb2.GetJobStatusResponse:
        await self.recorder.record("GetJobStatus", request, context)
        return control_pb2.GetJobStatusResponse(
            status=self._snapshot(await self._job(request.job_id, context))
        )

    async def WakeAgent(self, request: Any, context: Any) -> control_pb2.WakeAgentResponse:
        await self.recorder.record("WakeAgent", request, context)
        job = await self._job(request.job_id, context)
        job.daily_budget_microdollars += request.top_up_microdollars
        snapshot = self._snapshot(job)
        snapshot.agent_state = job_pb2.AGENT_STATE_WORKING
        return control_pb2.WakeAgentResponse(status=snapshot)

    async def WatchJobEvents(
        self, request: Any, context: Any
    ) -> AsyncIterator[control_pb2.WatchJobEventsResponse]:
        await self.recorder.record("WatchJobEvents", request, context)
        handler_done = self.recorder.track_stream(context)
        job = await self._job(request.job_id, context)
        plan = self.watch_plans.get(job.job_id, WatchPlan(events=[]))
        connection = self.watch_connections[job.job_id]
        self.watch_connections[job.job_id] += 1
        drop_after = plan.drops[connection] if connection < len(plan.drops) else None

        yield control_pb2.WatchJobEventsResponse(snapshot=self._snapshot(job))
        cursor = request.after_sequence if request.HasField("after_sequence") else plan.snapshot_sequence
        pending = [e for e in plan.events if e.sequence > cursor]
        # The first event goes alone, the rest as one batch, so both shapes are exercised.
        batches = [pending[:1], pending[1:]] if pending else []
        delivered = 0
        for index, batch in enumerate(b for b in batches if b):
            if drop_after is not None and delivered + len(batch) > drop_after:
                before_drop = batch[: drop_after - delivered]
                if before_drop:
                    yield control_pb2.WatchJobEventsResponse(
                        events=control_pb2.JobEventBatch(events=before_drop)
                    )
                await context.abort_with_status(rich_status(grpc.StatusCode.UNAVAILABLE, "connection reset"))
            yield control_pb2.WatchJobEventsResponse(events=control_pb2.JobEventBatch(events=batch))
            delivered += len(batch)
            if index == 0 and plan.heartbeat_after_first:
                yield control_pb2.WatchJobEventsResponse(
                    heartbeat=event_pb2.Heartbeat(latest_sequence=batch[-1].sequence)
                )
        if plan.end_error is not None:
            await context.abort_with_status(plan.end_error)
        if plan.hang:
            await asyncio.Event().wait()  # idle until the client goes away
        handler_done()

    async def WatchJobs(self, request: Any, context: Any) -> AsyncIterator[control_pb2.WatchJobsResponse]:
        """The fleet of every job, scripted per connection: the first lists it in two pages,
        sends one change and drops (UNAVAILABLE); a resume is OUT_OF_RANGE; a later listing
        sends one page and stays open."""
        await self.recorder.record("WatchJobs", request, context)
        connection, self.fleet_connections = self.fleet_connections, self.fleet_connections + 1
        statuses = [self._snapshot(job) for job in self.jobs.values()]
        if request.HasField("after_sequence"):
            expired = error_info("CURSOR_EXPIRED", oldest_sequence="12")
            await context.abort_with_status(rich_status(grpc.StatusCode.OUT_OF_RANGE, "expired", expired))
        if connection == 0:
            page = control_pb2.JobStatusPage
            yield control_pb2.WatchJobsResponse(snapshot=page(statuses=statuses[:1], latest_sequence=10))
            yield control_pb2.WatchJobsResponse(
                snapshot=page(statuses=statuses[1:], last=True, latest_sequence=10)
            )
            change = control_pb2.JobChange(
                sequence=11, kind=control_pb2.JOB_CHANGE_KIND_UPDATED, status=statuses[0]
            )
            yield control_pb2.WatchJobsResponse(changes=control_pb2.JobChangeBatch(changes=[change]))
            await context.abort_with_status(rich_status(grpc.StatusCode.UNAVAILABLE, "connection reset"))
        yield control_pb2.WatchJobsResponse(
            snapshot=control_pb2.JobStatusPage(statuses=statuses, last=True, latest_sequence=20)
        )
        await asyncio.Event().wait()  # idle until the client goes away


def new_escalation(job_id: str, **fields: Any) -> escalation_pb2.Escalation:
    return escalation_pb2.Escalation(
        escalation_id=str(uuid.uuid4()),
        job_id=job_id,
        owner_id="user-1",
        status=escalation_pb2.ESCALATION_STATUS_PENDING,
        trigger=escalation_pb2.ESCALATION_TRIGGER_AGENT_QUESTION,
        problem="Which database?",
        options=[
            escalation_pb2.EscalationOption(value="postgres", label="PostgreSQL"),
            escalation_pb2.EscalationOption(value="sqlite", label="SQLite"),
        ],
        **fields,
    )


class FakeEscalations(escalation_grpc.EscalationServiceServicer):
    """EscalationService over a dict of escalations."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.escalations: dict[str, escalation_pb2.Escalation] = {}
        self.agent_wake_time: datetime | None = None
        """Set: resolves answer that the agent sleeps until then; unset: that it waits."""
        self.hang_watch = False

    def add(self, escalation: escalation_pb2.Escalation) -> escalation_pb2.Escalation:
        self.escalations[escalation.escalation_id] = escalation
        return escalation

    async def _escalation(self, escalation_id: str, context: Any) -> escalation_pb2.Escalation:
        if escalation_id not in self.escalations:
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.NOT_FOUND,
                    f"escalation {escalation_id} not found",
                    error_info("ESCALATION_NOT_FOUND"),
                )
            )
        return self.escalations[escalation_id]

    async def GetEscalation(self, request: Any, context: Any) -> escalation_service_pb2.GetEscalationResponse:
        await self.recorder.record("GetEscalation", request, context)
        return escalation_service_pb2.GetEscalationResponse(
            escalation=await self._escalation(request.escalation_id, context)
        )

    async def ListEscalations(
        self, request: Any, context: Any
    ) -> escalation_service_pb2.ListEscalationsResponse:
        await self.recorder.record("ListEscalations", request, context)
        matching = [
            e
            for e in reversed(self.escalations.values())
            if (not request.job_id or e.job_id == request.job_id)
            and (not request.statuses or e.status in request.statuses)
        ]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 50)
        return escalation_service_pb2.ListEscalationsResponse(
            escalations=matching[start:end], next_page_token=str(end) if end < len(matching) else ""
        )

    async def ResolveEscalation(
        self, request: Any, context: Any
    ) -> escalation_service_pb2.ResolveEscalationResponse:
        await self.recorder.record("ResolveEscalation", request, context)
        escalation = await self._escalation(request.escalation_id, context)
        takes_answer = escalation.answer_kind in (
            escalation_pb2.ESCALATION_ANSWER_KIND_TEXT,
            escalation_pb2.ESCALATION_ANSWER_KIND_VALUE,
        )
        if not (takes_answer and request.answer) and request.decision not in {
            o.value for o in escalation.options
        }:
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "decision is not one of the escalation's options",
                    error_details_pb2.BadRequest(
                        field_violations=[
                            error_details_pb2.BadRequest.FieldViolation(
                                field="decision", description="must be one of: postgres, sqlite"
                            )
                        ]
                    ),
                    error_info("UNKNOWN_OPTION"),
                )
            )
        escalation.status = escalation_pb2.ESCALATION_STATUS_RESOLVED
        escalation.decision = request.decision
        escalation.guidance = request.guidance
        escalation.answer = request.answer
        escalation.tool_call.approved_arguments_json = request.edited_arguments_json
        escalation.resolved_by = "user-1"
        response = escalation_service_pb2.ResolveEscalationResponse(
            escalation=escalation, agent_waiting=self.agent_wake_time is None
        )
        if self.agent_wake_time is not None:
            response.agent_wake_time.FromDatetime(self.agent_wake_time)
        return response

    async def WatchEscalations(
        self, request: Any, context: Any
    ) -> AsyncIterator[escalation_service_pb2.WatchEscalationsResponse]:
        await self.recorder.record("WatchEscalations", request, context)
        handler_done = self.recorder.track_stream(context)
        visible = [e for e in self.escalations.values() if not request.job_id or e.job_id == request.job_id]
        pending = [e for e in visible if e.status == escalation_pb2.ESCALATION_STATUS_PENDING]
        yield escalation_service_pb2.WatchEscalationsResponse(
            snapshot=escalation_service_pb2.EscalationSnapshot(pending=pending, latest_sequence=len(visible))
        )
        events = [
            escalation_service_pb2.EscalationEvent(
                sequence=sequence,
                type="agent.escalation_raised",
                kind=escalation_service_pb2.ESCALATION_EVENT_KIND_RAISED,
                escalation=e,
            )
            for sequence, e in enumerate(visible, start=1)
            if not request.HasField("after_sequence") or sequence > request.after_sequence
        ]
        if events:
            yield escalation_service_pb2.WatchEscalationsResponse(
                events=escalation_service_pb2.EscalationEventBatch(events=events)
            )
        if self.hang_watch:
            await asyncio.Event().wait()  # idle until the client goes away
        handler_done()


@dataclass
class Harness:
    """A running server with both fake services."""

    server: grpc.aio.Server
    port: int
    recorder: Recorder
    jobs: FakeJobs
    escalations: FakeEscalations

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_harness(credentials: grpc.ServerCredentials | None = None) -> Harness:
    """Start a server on an ephemeral loopback port, plaintext or with ``credentials``."""
    # so_reuseport off: a second server must never silently share the port.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    recorder = Recorder()
    jobs = FakeJobs(recorder)
    escalations = FakeEscalations(recorder)
    control_grpc.add_AgentControlServiceServicer_to_server(jobs, server)
    escalation_grpc.add_EscalationServiceServicer_to_server(escalations, server)
    address = "127.0.0.1:0"
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    await server.start()
    return Harness(server, port, recorder, jobs, escalations)
