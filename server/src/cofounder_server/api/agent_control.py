"""AgentControlService: validate, call the domain, map to protobuf."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2
from cofounder_server.api import convert
from cofounder_server.api.context import principal_of
from cofounder_server.api.validation import (
    BRAIN_RE,
    MAX_BUDGET_MICRODOLLARS,
    MAX_GOAL_CHARS,
    MAX_MODEL_CHARS,
    MAX_REASON_CHARS,
    PROJECT_ID_RE,
    Validator,
)
from cofounder_server.domain.approvals import check_policy
from cofounder_server.domain.errors import InvalidArgument
from cofounder_server.domain.model import AgentSpec, JobFilter, NewJob
from cofounder_server.executor.plugin_errors import PluginConfigError
from cofounder_server.executor.registry import PluginRegistry
from cofounder_server.services.fleet_feed import JobFleetFeed
from cofounder_server.services.job_feed import JobEventFeed
from cofounder_server.services.jobs import JobService
from cofounder_server.services.status import LiveStatus

Context = grpc.aio.ServicerContext[Any, Any]
_PROJECT_ID_RULE = "must be 1 to 128 characters of [A-Za-z0-9._-]"


class AgentControlApi(pb_grpc.AgentControlServiceServicer):
    """The AgentControlService RPCs."""

    def __init__(
        self,
        jobs: JobService,
        status: LiveStatus,
        feed: JobEventFeed,
        plugins: PluginRegistry,
        fleet: JobFleetFeed,
    ) -> None:
        self._jobs = jobs
        self._status = status
        self._feed = feed
        self._plugins = plugins
        self._fleet = fleet

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Context) -> pb.SubmitJobResponse:
        with Validator() as check:
            check.request_id("request_id", request.request_id)
            check.pattern("project_id", request.project_id, PROJECT_ID_RE, _PROJECT_ID_RULE)
            check.text("goal", request.goal, MAX_GOAL_CHARS, required=True)
            check.int_range(
                "daily_budget_microdollars", request.daily_budget_microdollars, 1, MAX_BUDGET_MICRODOLLARS
            )
            if not request.HasField("agent"):
                check.fail("agent", "is required")
            else:
                check.pattern(
                    "agent.brain",
                    request.agent.brain,
                    BRAIN_RE,
                    "must be 1 to 64 characters of [a-z0-9_.-], starting with a letter or digit",
                )
                check.text("agent.model", request.agent.model, MAX_MODEL_CHARS, required=False)
                check.struct("agent.config", request.agent.config)
                timeout = request.agent.tool_approval.on_timeout
                if timeout not in convert.APPROVAL_TIMEOUT_FROM_PROTO:
                    check.fail("agent.tool_approval.on_timeout", f"{timeout} is not a valid value")
            check.labels("labels", request.labels)
        # Then the brain checks its config, which the checks above made safe to convert.
        agent = convert.agent_spec_from_proto(request.agent)
        with Validator() as check:
            self._check_agent(check, agent)
        principal = principal_of(context)
        new = NewJob(
            owner_id=principal.principal_id,
            project_id=request.project_id,
            goal=request.goal,
            daily_budget_microdollars=request.daily_budget_microdollars,
            agent=agent,
            labels=dict(request.labels),
        )
        job = await self._jobs.submit(principal, new, request.request_id or None)
        # A replayed job has this request's agent config too: the fingerprint covers it.
        return pb.SubmitJobResponse(job=convert.job_to_proto(job, request.agent.config))

    @staticmethod
    def _check_filter(
        check: Validator, statuses: Iterable[job_pb2.JobStatus.ValueType], project_id: str
    ) -> None:
        check.enum_values("statuses", statuses, convert.JOB_STATUS_FROM_PROTO)
        if project_id:
            check.pattern("project_id", project_id, PROJECT_ID_RE, _PROJECT_ID_RULE)

    def _check_agent(self, check: Validator, agent: AgentSpec) -> None:
        """The brain must exist and accept its config now: a job it cannot build would only
        fail later in the executor, far from the client that sent the bad config. So must
        its tool approval policy."""
        if agent.tool_approval is not None:
            try:
                check_policy(agent.tool_approval)
            except InvalidArgument as error:
                check.violations += error.violations
        try:
            self._plugins.validate(agent)
        except PluginConfigError as error:
            check.fail(error.field, error.reason)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        with Validator() as check:
            check.uuid("job_id", request.job_id)
        job = await self._jobs.get(principal_of(context), request.job_id)
        return pb.GetJobResponse(job=convert.job_to_proto(job))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        with Validator() as check:
            self._check_filter(check, request.statuses, request.project_id)
            if request.page_size < 0:
                check.fail("page_size", "must not be negative")
        job_filter = _filter_of(request.statuses, request.project_id)
        jobs, token = await self._jobs.list(
            principal_of(context), job_filter, request.page_size, request.page_token
        )
        return pb.ListJobsResponse(jobs=[convert.job_to_proto(j) for j in jobs], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.CancelJobResponse:
        with Validator() as check:
            check.uuid("job_id", request.job_id)
            check.request_id("request_id", request.request_id)
            check.text("reason", request.reason, MAX_REASON_CHARS, required=False)
        job = await self._jobs.cancel(
            principal_of(context), request.job_id, request.reason, request.request_id
        )
        return pb.CancelJobResponse(job=convert.job_to_proto(job))

    async def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: Context
    ) -> pb.GetJobStatusResponse:
        with Validator() as check:
            check.uuid("job_id", request.job_id)
        snapshot = await self._status.snapshot(principal_of(context), request.job_id)
        return pb.GetJobStatusResponse(status=convert.snapshot_to_proto(snapshot))

    async def WakeAgent(self, request: pb.WakeAgentRequest, context: Context) -> pb.WakeAgentResponse:
        with Validator() as check:
            check.uuid("job_id", request.job_id)
            check.request_id("request_id", request.request_id)
            check.int_range("top_up_microdollars", request.top_up_microdollars, 0, MAX_BUDGET_MICRODOLLARS)
        principal = principal_of(context)
        await self._jobs.wake(principal, request.job_id, request.request_id, request.top_up_microdollars)
        # The wake is committed: a Redis outage must not turn it into an error.
        snapshot = await self._status.snapshot(principal, request.job_id)
        return pb.WakeAgentResponse(status=convert.snapshot_to_proto(snapshot))

    # Batches of events go out pre-serialised (bytes), which the generated servicer's
    # signature does not know of; the handlers in .handlers send them as they are.
    async def WatchJobEvents(  # type: ignore[override]
        self, request: pb.WatchJobEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobEventsResponse | bytes]:
        with Validator() as check:
            check.uuid("job_id", request.job_id)
            after = check.after_sequence(request)
        async for item in self._feed.watch(principal_of(context), request.job_id, after):
            yield convert.watch_job_item_to_proto(item)

    async def WatchJobs(  # type: ignore[override]
        self, request: pb.WatchJobsRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobsResponse | bytes]:
        with Validator() as check:
            self._check_filter(check, request.statuses, request.project_id)
            after = check.after_sequence(request)
        job_filter = _filter_of(request.statuses, request.project_id)
        async for item in self._fleet.watch(principal_of(context), job_filter, after):
            yield convert.watch_jobs_item_to_proto(item)


def _filter_of(statuses: Iterable[job_pb2.JobStatus.ValueType], project_id: str) -> JobFilter:
    """``ListJobs``' and ``WatchJobs``' filter (validated)."""
    return JobFilter(
        statuses=frozenset(convert.JOB_STATUS_FROM_PROTO[s] for s in statuses),
        project_id=project_id,
    )
