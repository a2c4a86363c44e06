"""The synchronous client: the calls of :class:`cofounder_client.Client` on a blocking gRPC channel.

For scripts, notebooks and threaded programs. It runs on grpcio's synchronous channel, not on
an event loop of its own, so it also works inside a program that runs an asyncio loop
elsewhere (a call blocks only the thread that makes it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, event_pb2, job_pb2
from cofounder_client import _requests
from cofounder_client._requests import EscalationResolution, FleetSnapshot
from cofounder_client.client import DEFAULT_TARGET, USE_CLIENT_DEFAULT, Timeout, _channel_options
from cofounder_client.credentials import TLSConfig
from cofounder_client.errors import CofounderError, error_from_rpc_error

__all__ = ["SyncClient", "SyncInterceptor"]

_CONTROL = "/cofounder.agent.v1.AgentControlService/"
_ESCALATIONS = "/cofounder.agent.v1.EscalationService/"

SyncInterceptor: TypeAlias = (
    "grpc.UnaryUnaryClientInterceptor[Any, Any] | grpc.UnaryStreamClientInterceptor[Any, Any]"
)
"""An interceptor of grpcio's synchronous API, as :func:`grpc.intercept_channel` takes it."""

_Response = TypeVar("_Response", bound=Message)


class SyncClient:
    """Synchronous client of the cofounder control plane.

    The same calls, arguments, results and errors (:class:`CofounderError`) as the
    asynchronous :class:`cofounder_client.Client`; streams are iterators. Use it as a context
    manager, or call :meth:`close`::

        with SyncClient("localhost:50051", token="...") as client:
            job = client.submit_job(project_id="demo", goal="...", daily_budget_microdollars=5_000_000,
                                    agent={"brain": "scripted", "config": {"turns": [{"text": "done"}]}})
            for event in client.follow_job_events(job.job_id, after_sequence=0):
                print(event.sequence, event.type)

    A client may be shared between threads. Breaking out of a stream's ``for`` loop leaves the
    RPC open until the generator is closed or collected: call ``close()`` on it (or use
    ``contextlib.closing``) to cancel it at once.

    Args:
        target: ``host:port`` of the server (any gRPC target string).
        token: bearer token sent with every call.
        on_behalf_of: end-user id a trusted backend acts for, sent with every call.
        tls: ``False`` for plaintext, ``True`` for TLS against the system roots, or a
            :class:`TLSConfig`.
        timeout: default deadline of unary calls, in seconds; ``None`` for none.
        retries: transparent retries of a call that fails with ``UNAVAILABLE`` or with a
            ``CANCELLED`` the server sent (0 to 4).
        channel_options: extra gRPC channel options, replacing the defaults by key.
        interceptors: synchronous client interceptors (``grpc.UnaryUnaryClientInterceptor``,
            ``grpc.UnaryStreamClientInterceptor``) around every call, the first listed
            outermost.
        channel: a channel to use instead of opening one to ``target`` (for instance a
            ``grpc_testing`` channel); the client does not close it, and ``tls``, ``retries``
            and ``channel_options`` do not apply to it.
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
        interceptors: Sequence[SyncInterceptor] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        _requests.check_settings(retries, timeout)
        self._target = target
        self._timeout = timeout
        self._metadata = _requests.call_metadata(token, on_behalf_of)
        self._owned: grpc.Channel | None = None
        if channel is None:
            tls_config: TLSConfig | None = TLSConfig() if tls is True else (tls or None)
            options = _channel_options(tls_config, retries, channel_options)
            if tls_config is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, tls_config.channel_credentials(), options=options)
            self._owned = channel
        self._channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self._closed = False

    def __repr__(self) -> str:
        return f"SyncClient(target={self._target!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel the client opened; open calls are cancelled. Closing twice is
        harmless; calling any method afterwards raises :class:`RuntimeError`."""
        self._closed = True
        if self._owned is not None:
            channel, self._owned = self._owned, None
            channel.close()

    # --- AgentControlService -------------------------------------------------------------

    def submit_job(
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
        """Store a new job and queue it; see :meth:`cofounder_client.Client.submit_job`."""
        request = _requests.submit_job(
            project_id=project_id,
            goal=goal,
            daily_budget_microdollars=daily_budget_microdollars,
            agent=agent,
            labels=labels,
            request_id=request_id,
        )
        return self._unary(_CONTROL + "SubmitJob", request, control_pb2.SubmitJobResponse, timeout).job

    def get_job(self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> job_pb2.Job:
        """Read one job's durable record."""
        request = control_pb2.GetJobRequest(job_id=job_id)
        return self._unary(_CONTROL + "GetJob", request, control_pb2.GetJobResponse, timeout).job

    def list_jobs(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        project_id: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> control_pb2.ListJobsResponse:
        """List one page of the caller's jobs, newest first; see :meth:`iter_jobs`."""
        request = _requests.list_jobs(
            page_size=page_size, page_token=page_token, statuses=statuses, project_id=project_id
        )
        return self._unary(_CONTROL + "ListJobs", request, control_pb2.ListJobsResponse, timeout)

    def iter_jobs(
        self,
        *,
        page_size: int = 0,
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        project_id: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Iterator[job_pb2.Job]:
        """Yield every job matching the filters, page after page."""
        statuses = tuple(statuses)
        page_token = ""
        while True:
            page = self.list_jobs(
                page_size=page_size,
                page_token=page_token,
                statuses=statuses,
                project_id=project_id,
                timeout=timeout,
            )
            yield from page.jobs
            page_token = page.next_page_token
            if not page_token:
                return

    def cancel_job(
        self,
        job_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> job_pb2.Job:
        """Stop a job; see :meth:`cofounder_client.Client.cancel_job`."""
        request = _requests.cancel_job(job_id, reason=reason, request_id=request_id)
        return self._unary(_CONTROL + "CancelJob", request, control_pb2.CancelJobResponse, timeout).job

    def get_job_status(
        self, job_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> job_pb2.JobStatusSnapshot:
        """The live view of a job in one call."""
        request = control_pb2.GetJobStatusRequest(job_id=job_id)
        response = self._unary(_CONTROL + "GetJobStatus", request, control_pb2.GetJobStatusResponse, timeout)
        return response.status

    def wake_agent(
        self,
        job_id: str,
        *,
        top_up_microdollars: int = 0,
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> job_pb2.JobStatusSnapshot:
        """Wake a sleeping agent now, optionally adding budget for today."""
        request = _requests.wake_agent(job_id, top_up_microdollars=top_up_microdollars, request_id=request_id)
        return self._unary(_CONTROL + "WakeAgent", request, control_pb2.WakeAgentResponse, timeout).status

    def watch_job_events(
        self, job_id: str, *, after_sequence: int | None = None, timeout: float | None = None
    ) -> Generator[control_pb2.WatchJobEventsResponse, None, None]:
        """Stream a job's events: a ``snapshot``, ``events`` batches, ``heartbeat``s; see
        :meth:`cofounder_client.Client.watch_job_events`."""
        request = _requests.watch_job_events(job_id, after_sequence=after_sequence)
        return self._stream(_CONTROL + "WatchJobEvents", request, control_pb2.WatchJobEventsResponse, timeout)

    def follow_job_events(
        self,
        job_id: str,
        *,
        after_sequence: int | None = None,
        max_reconnects: int = 10,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
    ) -> Generator[event_pb2.JobEvent, None, None]:
        """Yield a job's events one by one, reconnecting after the last one seen when the
        stream fails with ``UNAVAILABLE``: every event once, in order. Same arguments and
        errors as :meth:`cofounder_client.Client.follow_job_events`."""
        cursor = _requests.JobEventsCursor(after_sequence)
        while True:
            stream = self.watch_job_events(job_id, after_sequence=cursor.sequence)
            try:
                for message in stream:
                    for item in cursor.receive(message):
                        if isinstance(item, event_pb2.JobEvent):
                            yield item
                return
            except CofounderError as error:
                if cursor.recover(error, max_reconnects) == "raise":
                    raise
                time.sleep(_requests.backoff_delay(cursor.failures, initial_backoff, max_backoff))
            finally:
                stream.close()

    def watch_jobs(
        self,
        *,
        project_id: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        after_sequence: int | None = None,
        timeout: float | None = None,
    ) -> Generator[control_pb2.WatchJobsResponse, None, None]:
        """Stream the status of every matching job; see :meth:`cofounder_client.Client.watch_jobs`."""
        request = _requests.watch_jobs(
            project_id=project_id, statuses=statuses, after_sequence=after_sequence
        )
        return self._stream(_CONTROL + "WatchJobs", request, control_pb2.WatchJobsResponse, timeout)

    def follow_jobs(
        self,
        *,
        project_id: str = "",
        statuses: Iterable[job_pb2.JobStatus.ValueType] = (),
        max_reconnects: int = 10,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
    ) -> Generator[FleetSnapshot | control_pb2.JobChange, None, None]:
        """Yield a :class:`FleetSnapshot`, then each ``JobChange``, resuming after
        ``UNAVAILABLE`` and listing again after ``OUT_OF_RANGE``; see
        :meth:`cofounder_client.Client.follow_jobs`."""
        statuses = tuple(statuses)
        cursor = _requests.FleetCursor()
        while True:
            cursor.connect()
            stream = self.watch_jobs(project_id=project_id, statuses=statuses, after_sequence=cursor.sequence)
            try:
                for message in stream:
                    yield from cursor.receive(message)
                return
            except CofounderError as error:
                recovery = cursor.recover(error, max_reconnects)
                if recovery == "raise":
                    raise
                if recovery == "back_off":
                    time.sleep(_requests.backoff_delay(cursor.failures, initial_backoff, max_backoff))
            finally:
                stream.close()

    # --- EscalationService ---------------------------------------------------------------

    def get_escalation(
        self, escalation_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> escalation_pb2.Escalation:
        """Read one escalation."""
        request = escalation_service_pb2.GetEscalationRequest(escalation_id=escalation_id)
        response = self._unary(
            _ESCALATIONS + "GetEscalation", request, escalation_service_pb2.GetEscalationResponse, timeout
        )
        return response.escalation

    def list_escalations(
        self,
        *,
        job_id: str = "",
        statuses: Iterable[escalation_pb2.EscalationStatus.ValueType] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> escalation_service_pb2.ListEscalationsResponse:
        """List one page of the caller's escalations, newest first."""
        request = _requests.list_escalations(
            job_id=job_id, statuses=statuses, page_size=page_size, page_token=page_token
        )
        return self._unary(
            _ESCALATIONS + "ListEscalations", request, escalation_service_pb2.ListEscalationsResponse, timeout
        )

    def iter_escalations(
        self,
        *,
        job_id: str = "",
        statuses: Iterable[escalation_pb2.EscalationStatus.ValueType] = (),
        page_size: int = 0,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Iterator[escalation_pb2.Escalation]:
        """Yield every escalation matching the filters, page after page."""
        statuses = tuple(statuses)
        page_token = ""
        while True:
            page = self.list_escalations(
                job_id=job_id, statuses=statuses, page_size=page_size, page_token=page_token, timeout=timeout
            )
            yield from page.escalations
            page_token = page.next_page_token
            if not page_token:
                return

    def resolve_escalation(
        self,
        escalation_id: str,
        *,
        decision: str,
        guidance: str = "",
        request_id: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> EscalationResolution:
        """Answer an escalation; see :meth:`cofounder_client.Client.resolve_escalation`."""
        request = _requests.resolve_escalation(
            escalation_id, decision=decision, guidance=guidance, request_id=request_id
        )
        response = self._unary(
            _ESCALATIONS + "ResolveEscalation",
            request,
            escalation_service_pb2.ResolveEscalationResponse,
            timeout,
        )
        return _requests.resolution(response)

    def watch_escalations(
        self, *, job_id: str = "", after_sequence: int | None = None, timeout: float | None = None
    ) -> Generator[escalation_service_pb2.WatchEscalationsResponse, None, None]:
        """Stream escalation events visible to the caller; see
        :meth:`cofounder_client.Client.watch_escalations`."""
        request = _requests.watch_escalations(job_id=job_id, after_sequence=after_sequence)
        return self._stream(
            _ESCALATIONS + "WatchEscalations",
            request,
            escalation_service_pb2.WatchEscalationsResponse,
            timeout,
        )

    # --- plumbing ------------------------------------------------------------------------

    def _callable(self, method: str, response: type[Message], *, stream: bool) -> Callable[..., Any]:
        if self._closed:
            raise RuntimeError("the client is closed")
        make = self._channel.unary_stream if stream else self._channel.unary_unary
        return make(
            method,
            request_serializer=_serialize,
            response_deserializer=response.FromString,
        )

    def _unary(self, method: str, request: Message, response: type[_Response], timeout: Timeout) -> _Response:
        call = self._callable(method, response, stream=False)
        deadline = self._timeout if timeout is USE_CLIENT_DEFAULT else timeout
        try:
            result: _Response = call(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        return result

    def _stream(
        self, method: str, request: Message, response: type[_Response], timeout: float | None
    ) -> Generator[_Response, None, None]:
        call = self._callable(method, response, stream=True)(
            request, timeout=timeout, metadata=self._metadata
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            # On close(), garbage collection and errors alike; a no-op once the call ended.
            call.cancel()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
