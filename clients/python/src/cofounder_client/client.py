"""The asynchronous client: one method per RPC of the control plane, typed with the generated messages."""

# The `timeout` arguments are gRPC deadlines, sent to the server with the call, not local
# cancellation scopes that asyncio.timeout() could replace.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as _importlib_metadata
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeAlias, TypeVar

import grpc

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import agent_control_service_pb2_grpc as control_grpc
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, event_pb2, job_pb2
from cofounder.agent.v1 import escalation_service_pb2_grpc as escalation_grpc
from cofounder_client import _requests
from cofounder_client._requests import (
    AUTHORIZATION_HEADER,
    ON_BEHALF_OF_HEADER,
    EscalationResolution,
    FleetSnapshot,
)
from cofounder_client.credentials import TLSConfig
from cofounder_client.errors import CofounderError, error_from_rpc_error

__all__ = [
    "AUTHORIZATION_HEADER",
    "DEFAULT_CHANNEL_OPTIONS",
    "DEFAULT_TARGET",
    "ON_BEHALF_OF_HEADER",
    "USE_CLIENT_DEFAULT",
    "Client",
    "EscalationResolution",
    "FleetSnapshot",
    "ReconnectHook",
]

DEFAULT_TARGET: Final = "localhost:50051"
"""Where :class:`Client` connects when no target is given."""

DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, str | int], ...]] = (
    # Streams stay open for hours. Ping a quiet connection once a minute to notice a dead
    # peer, but never more often than every 30 s: servers answer more frequent pings with
    # GOAWAY too_many_pings. Idle connections without calls are not pinged at all.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # A watch only receives, so without this gRPC stops pinging after two pings and a
    # half-open connection under a long watch would go unnoticed.
    ("grpc.http2.max_pings_without_data", 0),
    # A watcher that fell behind receives its backlog as one batch, which can exceed the
    # 4 MiB gRPC default.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
"""Channel options every :class:`Client` starts from; ``channel_options`` overrides them by key."""

_SERVICES: Final = ("cofounder.agent.v1.AgentControlService", "cofounder.agent.v1.EscalationService")

try:
    _VERSION = _importlib_metadata.version("cofounder-client")
except _importlib_metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0"
_USER_AGENT: Final = f"cofounder-client-python/{_VERSION}"


class _UseClientDefault(enum.Enum):
    TOKEN = "USE_CLIENT_DEFAULT"

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = _UseClientDefault.TOKEN
"""Default of the per-call ``timeout`` argument: use the ``timeout`` the client was built with."""

Timeout: TypeAlias = float | Literal[_UseClientDefault.TOKEN] | None
"""A per-call deadline in seconds, ``None`` for none, or :data:`USE_CLIENT_DEFAULT`."""

ReconnectHook: TypeAlias = Callable[[CofounderError, int, float], None]
"""Called by the ``follow_*`` methods before a reconnect: the error, the attempt number
(from 1) and the delay before it in seconds."""

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class _Stubs:
    control: control_grpc.AgentControlServiceStub
    escalations: escalation_grpc.EscalationServiceStub


class Client:
    """Asynchronous client of the cofounder control plane (``grpc.aio``).

    Use it as an async context manager, or call :meth:`close` when done::

        async with Client("localhost:50051", token="...") as client:
            job = await client.submit_job(
                project_id="demo", goal="Write a haiku", daily_budget_microdollars=5_000_000,
                agent={"brain": "scripted", "config": {"turns": [{"text": "done"}]}},
            )

    The channel is opened on first use, inside the running event loop, so a client may be
    constructed anywhere. One client multiplexes any number of concurrent calls and streams
    over a single HTTP/2 connection; share it rather than creating one per call.

    Authentication travels as plain call metadata on every call: ``authorization: Bearer
    <token>`` and, for a backend acting for one of its users, ``cofounder-on-behalf-of: <user
    id>``. Plain metadata (rather than gRPC call credentials) also works on plaintext
    loopback channels; use TLS anywhere else so the token is not sent in clear.

    Unary calls get a deadline of ``timeout`` seconds unless the call passes its own
    ``timeout=`` (``None`` disables it). Streams have no deadline unless one is passed.
    Unary calls (and streams that have not yet delivered a message) are retried by gRPC on
    ``UNAVAILABLE`` and on a ``CANCELLED`` the server sent (a draining server cancels the
    calls it had received but not started) up to ``retries`` times with exponential backoff;
    this is safe because every mutation carries a ``request_id`` that the retry repeats.

    Args:
        target: ``host:port`` of the server (any gRPC target string).
        token: bearer token sent with every call.
        on_behalf_of: end-user id a trusted backend acts for, sent with every call.
        tls: ``False`` for plaintext, ``True`` for TLS verified against the system roots, or a
            :class:`TLSConfig` for a private CA and/or mutual TLS.
        timeout: default deadline of unary calls, in seconds; ``None`` for none.
        retries: transparent retries of a call that fails with ``UNAVAILABLE`` or with a
            ``CANCELLED`` the server sent (0 to 4).
        channel_options: extra gRPC channel options; they replace the defaults
            (:data:`DEFAULT_CHANNEL_OPTIONS`) with the same key.
        interceptors: ``grpc.aio`` client interceptors (``UnaryUnaryClientInterceptor``,
            ``UnaryStreamClientInterceptor``) around every call, the first listed outermost:
            the place for metadata of your own, tracing and logging. They see the call as
            sent, with the client's metadata and deadline, and each retry gRPC makes of it
            is not seen again (retries happen below them).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        on_behalf_of: str | None = None,
        tls: TLSConfig | bool = False,
        timeout: float | None = 10.0,
        retries: int = 3,
        channel_options: Sequence[tuple[str, str | int]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        _requests.check_settings(retries, timeout)
        self._target = target
        self._tls: TLSConfig | None = TLSConfig() if tls is True else (tls or None)
        self._timeout = timeout
        self._metadata = _requests.call_metadata(token, on_behalf_of)
        self._options = _channel_options(self._tls, retries, channel_options)
        self._interceptors = tuple(interceptors)
        self._channel: grpc.aio.Channel | None = None
        self._stubs_cache: _Stubs | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Client(target={self._target!r}, tls={self._tls is not None})"

    @property
    def target(self) -> str:
        """The server address this client connects to."""
        return self._target

    async def __aenter__(self) -> Self:
        self._stubs()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; open calls are cancelled (after ``grace`` seconds, if given).

        Closing twice is harmless; calling any method afterwards raises :class:`RuntimeError`.
        """
        self._closed = True
        if self._channel is not None:
            channel, self._channel, self._stubs_cache = self._channel, None, None
            await channel.close(grace)

    # --- AgentControlService -------------------------------------------------------------

    async def submit_job(
        self,
        *,
        project_id: str,
        goal: str,
        daily_budget_microdollars: int,
        agent: job_pb2.AgentSpec | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> job_pb2.Job:
        """Store a new job and queue it for the executor.

        Args:
            project_id: project grouping, 1 to 128 characters of ``[A-Za-z0-9._-]``.
            goal: what the agent should achieve.
            daily_budget_microdollars: spend allowed per UTC day (1,000,000 = one US dollar).
            agent: the agent to run: an ``AgentSpec`` or a dict in its JSON form, e.g.
                ``{"brain": "scripted", "model": "m", "config": {...}}``.
            labels: free-form labels for your bookkeeping.
            request_id: idempotency key. A random UUID when omitted, so gRPC's own retries of
                this call cannot create a second job; pass your own and reuse it to make your
                application-level retries idempotent too.
            timeout: deadline in seconds for this call.

        Returns:
            The stored job (status ``JOB_STATUS_QUEUED``, or later for a repeated request).
        """
        request = _requests.submit_job(
            project_id=project_id,
            goal=goal,
            daily_budget_microdollars=daily_budget_microdollars,
            agent=agent,
            labels=labels,
            request_id=request_id,
        )
        response = await self._unary(self._stubs().control.SubmitJob, request, timeout)
        return response.job

    async def get_job(self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> job_pb2.Job:
        """Read one job's durable record. ``NOT_FOUND`` for unknown ids and other tenants' jobs."""
        request = control_pb2.GetJobRequest(job_id=job_id)
        response = await self._unary(self._stubs().control.GetJob, request, timeout)
        return response.job

    async def list_jobs(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        project_id: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> control_pb2.ListJobsResponse:
        """List one page of the caller's jobs, newest first.

        Args:
            page_size: maximum jobs to return; 0 for the server default (50).
            page_token: ``next_page_token`` of the previous page, with the same filters.
            statuses: only jobs in one of these statuses; empty for all.
            project_id: only jobs of this project; empty for all.
            timeout: deadline in seconds for this call.

        Returns:
            The page: ``jobs`` and ``next_page_token`` (empty on the last page).
            :meth:`iter_jobs` follows the tokens for you.
        """
        request = _requests.list_jobs(
            page_size=page_size, page_token=page_token, statuses=statuses, project_id=project_id
        )
        return await self._unary(self._stubs().control.ListJobs, request, timeout)

    async def iter_jobs(
        self,
        *,
        page_size: int = 0,
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        project_id: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> AsyncGenerator[job_pb2.Job, None]:
        """Yield every job matching the filters, fetching page after page as needed.

        ``timeout`` applies to each page request. Arguments are those of :meth:`list_jobs`.
        """
        statuses = tuple(statuses)
        page_token = ""
        while True:
            page = await self.list_jobs(
                page_size=page_size,
                page_token=page_token,
                statuses=statuses,
                project_id=project_id,
                timeout=timeout,
            )
            for job in page.jobs:
                yield job
            page_token = page.next_page_token
            if not page_token:
                return

    async def cancel_job(
        self,
        job_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> job_pb2.Job:
        """Stop a job. Cancelling a cancelled job returns it unchanged.

        Args:
            job_id: the job to cancel.
            reason: why; stored as the job's outcome detail.
            request_id: idempotency key; a random UUID when omitted.
            timeout: deadline in seconds for this call.

        Returns:
            The job after cancellation. ``FAILED_PRECONDITION`` if it had already finished.
        """
        request = _requests.cancel_job(job_id, reason=reason, request_id=request_id)
        response = await self._unary(self._stubs().control.CancelJob, request, timeout)
        return response.job

    async def get_job_status(
        self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> job_pb2.JobStatusSnapshot:
        """The live view of a job in one call: status, agent state, wake time, budget use,
        pending escalations and the latest event sequence (resume a watch after it)."""
        request = control_pb2.GetJobStatusRequest(job_id=job_id)
        response = await self._unary(self._stubs().control.GetJobStatus, request, timeout)
        return response.status

    async def wake_agent(
        self,
        job_id: str,
        *,
        top_up_microdollars: int = 0,
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> job_pb2.JobStatusSnapshot:
        """Wake a sleeping agent now, optionally adding budget for today.

        Args:
            job_id: the job whose agent to wake.
            top_up_microdollars: budget to add for the current day; 0 for none.
            request_id: idempotency key (a retried top-up is applied once); a random UUID
                when omitted.
            timeout: deadline in seconds for this call.

        Returns:
            The live view right after the wake. ``FAILED_PRECONDITION`` unless the agent slept.
        """
        request = _requests.wake_agent(job_id, top_up_microdollars=top_up_microdollars, request_id=request_id)
        response = await self._unary(self._stubs().control.WakeAgent, request, timeout)
        return response.status

    def watch_job_events(
        self, job_id: str, *, after_sequence: int | None = None, timeout: float | None = None
    ) -> AsyncGenerator[control_pb2.WatchJobEventsResponse, None]:
        """Stream a job's events as the server sends them.

        The first message is a ``snapshot`` of the job; then ``events`` batches (in order,
        without holes) and, when idle, ``heartbeat`` messages. The stream ends after the job's
        terminal event. The RPC starts on first iteration; leaving the iteration early should
        go through ``aclose()`` (or ``contextlib.aclosing``), which cancels the RPC, as does
        cancelling the task that iterates.

        Args:
            job_id: the job to watch.
            after_sequence: deliver events after this sequence; 0 for the whole retained
                history; ``None`` for live events only, after the snapshot.
            timeout: deadline in seconds for the whole stream; ``None`` (default) for none.

        Raises:
            CofounderError: when the stream fails, including mid-iteration. ``OUT_OF_RANGE``
                means the cursor is older than the retained history.
        """
        request = _requests.watch_job_events(job_id, after_sequence=after_sequence)
        return self._stream(self._stubs().control.WatchJobEvents, request, timeout)

    async def follow_job(
        self,
        job_id: str,
        *,
        after_sequence: int | None = None,
        max_reconnects: int = 10,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        on_reconnect: ReconnectHook | None = None,
    ) -> AsyncGenerator[job_pb2.JobStatusSnapshot | event_pb2.JobEvent, None]:
        """Yield a job's live view: the ``JobStatusSnapshot`` each connection opens with, then
        its events one by one, reconnecting transparently when the stream drops.

        What :meth:`follow_job_events` does, plus the snapshots: after a reconnect the new
        snapshot says how the job stands now (budget, agent state, pending escalations), so a
        view rebuilt from it is current again. Heartbeats are consumed here.

        Args:
            job_id: the job to follow.
            after_sequence: as for :meth:`watch_job_events`.
            max_reconnects: consecutive failed attempts tolerated; an event batch or heartbeat
                resets the count.
            initial_backoff: delay before the first reconnect, in seconds.
            max_backoff: upper bound of the delay between reconnects, in seconds.
            on_reconnect: called before each reconnect with the error, the attempt number
                (from 1) and the delay in seconds, e.g. to tell a person the stream is retrying.

        Raises:
            CofounderError: any error other than ``UNAVAILABLE``, or ``UNAVAILABLE`` once
                ``max_reconnects`` is exhausted.
        """
        cursor = _requests.JobEventsCursor(after_sequence)
        while True:
            try:
                async with contextlib.aclosing(
                    self.watch_job_events(job_id, after_sequence=cursor.sequence)
                ) as stream:
                    async for message in stream:
                        for item in cursor.receive(message):
                            yield item
                return
            except CofounderError as error:
                if cursor.recover(error, max_reconnects) == "raise":
                    raise
                await _back_off(error, cursor.failures, initial_backoff, max_backoff, on_reconnect)

    async def follow_job_events(
        self,
        job_id: str,
        *,
        after_sequence: int | None = None,
        max_reconnects: int = 10,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        on_reconnect: ReconnectHook | None = None,
    ) -> AsyncGenerator[event_pb2.JobEvent, None]:
        """Yield a job's events one by one, reconnecting transparently when the stream drops.

        Snapshots and heartbeats are consumed here. The last delivered sequence is tracked, and
        when the stream fails with ``UNAVAILABLE`` (server restart, connection loss) it is
        reopened after that sequence, so every event is yielded once, in order. Reconnects
        back off exponentially from ``initial_backoff`` up to ``max_backoff`` seconds; after
        ``max_reconnects`` consecutive failures the last error is raised. The iteration ends
        when the server ends the stream (after the job's terminal event).

        Args:
            job_id: the job to follow.
            after_sequence: as for :meth:`watch_job_events`.
            max_reconnects: consecutive failed attempts tolerated; an event batch or heartbeat
                resets the count.
            initial_backoff: delay before the first reconnect, in seconds.
            max_backoff: upper bound of the delay between reconnects, in seconds.
            on_reconnect: as for :meth:`follow_job`.

        Raises:
            CofounderError: any error other than ``UNAVAILABLE``, or ``UNAVAILABLE`` once
                ``max_reconnects`` is exhausted.
        """
        async with contextlib.aclosing(
            self.follow_job(
                job_id,
                after_sequence=after_sequence,
                max_reconnects=max_reconnects,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                on_reconnect=on_reconnect,
            )
        ) as items:
            async for item in items:
                if isinstance(item, event_pb2.JobEvent):
                    yield item

    def watch_jobs(
        self,
        *,
        project_id: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        after_sequence: int | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[control_pb2.WatchJobsResponse, None]:
        """Stream the status of every job :meth:`list_jobs` would list with the same filters.

        Without ``after_sequence`` the stream opens with ``snapshot`` pages (the last one has
        ``last`` set and the ``latest_sequence`` changes continue after); then ``changes``
        batches (each job's status after a change, announced ``ENTERED``, ``UPDATED`` or
        ``LEFT`` the filter) and ``heartbeat`` messages when idle. The stream does not end by
        itself. Closing the iterator or cancelling the iterating task cancels the RPC.

        Args:
            project_id: only jobs of this project; empty for all.
            statuses: only jobs in one of these statuses; empty for all.
            after_sequence: instead of the snapshot, the jobs changed after this fleet
                sequence (each once, as it stands: the feed is coalesced).
            timeout: deadline in seconds for the whole stream; ``None`` (default) for none.

        Raises:
            CofounderError: when the stream fails, including mid-iteration.
        """
        request = _requests.watch_jobs(
            project_id=project_id, statuses=statuses, after_sequence=after_sequence
        )
        return self._stream(self._stubs().control.WatchJobs, request, timeout)

    async def follow_jobs(
        self,
        *,
        project_id: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        max_reconnects: int = 10,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        on_reconnect: ReconnectHook | None = None,
    ) -> AsyncGenerator[FleetSnapshot | control_pb2.JobChange, None]:
        """Yield a fleet view: a :class:`FleetSnapshot` of every matching job, then each
        ``JobChange``, resuming on its own when the stream drops.

        Pages and heartbeats are consumed here. The cursor (the newest change or heartbeat)
        is tracked, and when the stream fails with ``UNAVAILABLE`` it is reopened after it:
        the changes missed meanwhile arrive once each, coalesced (each job as it stands).
        When the server no longer has the cursor (``OUT_OF_RANGE``), the view is listed
        again: a new :class:`FleetSnapshot` replaces everything held. Reconnects back off
        exponentially from ``initial_backoff`` up to ``max_backoff`` seconds; after
        ``max_reconnects`` consecutive failures the last error is raised.

        Args:
            project_id: as for :meth:`watch_jobs`.
            statuses: as for :meth:`watch_jobs`; a ``LEFT`` change drops a job from the view.
            max_reconnects: consecutive failed attempts tolerated; any message resets the count.
            initial_backoff: delay before the first reconnect, in seconds.
            max_backoff: upper bound of the delay between reconnects, in seconds.
            on_reconnect: as for :meth:`follow_job`.

        Raises:
            CofounderError: any error other than ``UNAVAILABLE`` and ``OUT_OF_RANGE``, or
                ``UNAVAILABLE`` once ``max_reconnects`` is exhausted.
        """
        statuses = tuple(statuses)
        cursor = _requests.FleetCursor()
        while True:
            cursor.connect()
            try:
                async with contextlib.aclosing(
                    self.watch_jobs(project_id=project_id, statuses=statuses, after_sequence=cursor.sequence)
                ) as stream:
                    async for message in stream:
                        for item in cursor.receive(message):
                            yield item
                return
            except CofounderError as error:
                recovery = cursor.recover(error, max_reconnects)
                if recovery == "raise":
                    raise
                if recovery == "back_off":
                    await _back_off(error, cursor.failures, initial_backoff, max_backoff, on_reconnect)

    # --- EscalationService ---------------------------------------------------------------

    async def get_escalation(
        self, escalation_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> escalation_pb2.Escalation:
        """Read one escalation. ``NOT_FOUND`` for unknown ids and other tenants' escalations."""
        request = escalation_service_pb2.GetEscalationRequest(escalation_id=escalation_id)
        response = await self._unary(self._stubs().escalations.GetEscalation, request, timeout)
        return response.escalation

    async def list_escalations(
        self,
        *,
        job_id: str = "",
        statuses: Iterable[escalation_pb2.EscalationStatus.ValueType] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> escalation_service_pb2.ListEscalationsResponse:
        """List one page of the caller's escalations, newest first.

        Args:
            job_id: only this job's escalations; empty for all.
            statuses: only escalations in one of these statuses; empty for all.
            page_size: maximum escalations to return; 0 for the server default (50).
            page_token: ``next_page_token`` of the previous page, with the same filters.
            timeout: deadline in seconds for this call.

        Returns:
            The page: ``escalations`` and ``next_page_token`` (empty on the last page).
        """
        request = _requests.list_escalations(
            job_id=job_id, statuses=statuses, page_size=page_size, page_token=page_token
        )
        return await self._unary(self._stubs().escalations.ListEscalations, request, timeout)

    async def iter_escalations(
        self,
        *,
        job_id: str = "",
        statuses: Iterable[escalation_pb2.EscalationStatus.ValueType] = (),
        page_size: int = 0,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> AsyncGenerator[escalation_pb2.Escalation, None]:
        """Yield every escalation matching the filters, page after page.

        ``timeout`` applies to each page request. Arguments are those of
        :meth:`list_escalations`.
        """
        statuses = tuple(statuses)
        page_token = ""
        while True:
            page = await self.list_escalations(
                job_id=job_id, statuses=statuses, page_size=page_size, page_token=page_token, timeout=timeout
            )
            for escalation in page.escalations:
                yield escalation
            page_token = page.next_page_token
            if not page_token:
                return

    async def resolve_escalation(
        self,
        escalation_id: str,
        *,
        decision: str = "",
        guidance: str = "",
        answer: str = "",
        arguments_digest: str = "",
        edited_arguments_json: str = "",
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> EscalationResolution:
        """Answer an escalation; the decision reaches the waiting agent.

        Args:
            escalation_id: the escalation to resolve.
            decision: the ``value`` of one of the escalation's options (anything else is
                ``INVALID_ARGUMENT``); for a tool approval ``approve``, ``approve_for_job``
                or ``reject``. Empty for a question that takes an ``answer``.
            guidance: free-text guidance for the agent (for a rejected tool call, the
                agent's message).
            answer: the free-text answer, or the JSON value (as text) matching the
                question's ``answer_schema_json``.
            arguments_digest: to approve a tool call, the ``tool_call.arguments_digest`` of
                the call you reviewed (another one is ``FAILED_PRECONDITION``,
                ``TOOL_CALL_DIGEST_MISMATCH``).
            edited_arguments_json: approve the call with these arguments instead (a JSON
                object matching the tool's input schema).
            request_id: idempotency key; a random UUID when omitted.
            timeout: deadline in seconds for this call.

        Returns:
            The escalation after resolution, and whether its agent continues now
            (``agent_waiting``) or when it wakes to act on the answer (``agent_wake_time``).
            Repeating the call with the same ``request_id`` returns the same escalation;
            any other resolve of an escalation
            that is no longer pending is ``FAILED_PRECONDITION`` (reason
            ``ESCALATION_ALREADY_RESOLVED``, the winning decision in its metadata).
        """
        request = _requests.resolve_escalation(
            escalation_id,
            decision=decision,
            guidance=guidance,
            request_id=request_id,
            answer=answer,
            arguments_digest=arguments_digest,
            edited_arguments_json=edited_arguments_json,
        )
        response = await self._unary(self._stubs().escalations.ResolveEscalation, request, timeout)
        return _requests.resolution(response)

    def watch_escalations(
        self, *, job_id: str = "", after_sequence: int | None = None, timeout: float | None = None
    ) -> AsyncGenerator[escalation_service_pb2.WatchEscalationsResponse, None]:
        """Stream escalation events visible to the caller.

        The first message is a ``snapshot`` of pending escalations; then ``events`` batches
        (raised, resolved, withdrawn) and ``heartbeat`` messages when idle. Closing the
        iterator (``aclose()``) or cancelling the iterating task cancels the RPC.

        Args:
            job_id: only this job's escalations; empty for all of the caller's.
            after_sequence: deliver feed events after this sequence of the escalation feed;
                ``None`` for live events only.
            timeout: deadline in seconds for the whole stream; ``None`` (default) for none.

        Raises:
            CofounderError: when the stream fails, including mid-iteration.
        """
        request = _requests.watch_escalations(job_id=job_id, after_sequence=after_sequence)
        return self._stream(self._stubs().escalations.WatchEscalations, request, timeout)

    # --- plumbing ------------------------------------------------------------------------

    def _stubs(self) -> _Stubs:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stubs_cache is None:
            if self._tls is None:
                channel = grpc.aio.insecure_channel(
                    self._target, options=self._options, interceptors=self._interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    self._target,
                    self._tls.channel_credentials(),
                    options=self._options,
                    interceptors=self._interceptors,
                )
            self._channel = channel
            self._stubs_cache = _Stubs(
                control=control_grpc.AgentControlServiceStub(channel),
                escalations=escalation_grpc.EscalationServiceStub(channel),
            )
        return self._stubs_cache

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: Timeout,
    ) -> _Response:
        deadline = self._timeout if timeout is USE_CLIENT_DEFAULT else timeout
        try:
            return await method(request, timeout=deadline, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc_error(error) from error

    async def _stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> AsyncGenerator[_Response, None]:
        call = method(request, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            # Reached on aclose(), on cancellation of the iterating task and on errors alike;
            # a no-op once the call has finished, otherwise the server sees the cancellation.
            call.cancel()


async def _back_off(
    error: CofounderError,
    failures: int,
    initial_backoff: float,
    max_backoff: float,
    on_reconnect: ReconnectHook | None,
) -> None:
    """Wait before reconnect number ``failures``: exponential, capped, with jitter."""
    delay = _requests.backoff_delay(failures, initial_backoff, max_backoff)
    if on_reconnect is not None:
        on_reconnect(error, failures, delay)
    await asyncio.sleep(delay)


def _channel_options(
    tls: TLSConfig | None, retries: int, overrides: Sequence[tuple[str, str | int]]
) -> list[tuple[str, str | int]]:
    options: dict[str, str | int] = dict(DEFAULT_CHANNEL_OPTIONS)
    options["grpc.primary_user_agent"] = _USER_AGENT
    if retries:
        options["grpc.service_config"] = json.dumps(_retry_service_config(retries))
    else:
        options["grpc.enable_retries"] = 0
    if tls is not None and tls.server_name_override:
        options["grpc.ssl_target_name_override"] = tls.server_name_override
    options.update(overrides)
    return list(options.items())


def _retry_service_config(retries: int) -> dict[str, Any]:
    # CANCELLED is retried too: a server that begins a graceful stop cancels, inside gRPC's
    # core, every call that reached it but that its application had not yet picked up (and
    # any that arrives before the client has read the GOAWAY). The server never ran those
    # calls, and the client never sees that CANCELLED in place of UNAVAILABLE otherwise: its
    # own cancellation ends the call locally (asyncio.CancelledError) and is never retried.
    # Every mutation carries a request_id that the retry repeats, so even a CANCELLED after
    # the server acted (calls cut at the end of its shutdown grace) is safe to repeat.
    return {
        "methodConfig": [
            {
                "name": [{"service": service} for service in _SERVICES],
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
