"""Interceptors of both clients against the real control plane: what they add, the server sees."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from cofounder_client import Client, SyncClient, UnauthenticatedError
from cofounder_server.app import Application
from cofounder_server.config import Settings
from cofounder_server.observability import logs
from tests.auth.support import ALICE, write_principals

RPC_TIMEOUT = 10.0
AGENT = {"brain": "scripted", "config": {"turns": [{"text": "done"}]}}


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    """The call details with ``extra`` appended to their metadata (``replace`` keeps the type)."""
    metadata = tuple(details.metadata or ()) + extra
    return details._replace(metadata=metadata)


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds an authorization header to every unary call, as an application's auth layer would."""

    def __init__(self, token: str) -> None:
        self.header = (("authorization", f"Bearer {token}"),)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.header), request)


class StreamBearerToken(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """The same for streams: grpc.aio files each interceptor under one kind of call only."""

    def __init__(self, token: str) -> None:
        self.header = (("authorization", f"Bearer {token}"),)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.header), request)


class RequestIds(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Names every unary call with an ``x-request-id`` of its own, and remembers them."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.sent.append(f"req-{len(self.sent) + 1}")
        return await continuation(_with_metadata(details, (("x-request-id", self.sent[-1]),)), request)


class CallLog(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Logs every unary call with its method, deadline and outcome."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("tests.client.calls")

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        code = await call.code()
        self.logger.info(
            "%s %s timeout=%s",
            details.method.decode() if isinstance(details.method, bytes) else details.method,
            code.name,
            details.timeout,
        )
        return call


class SyncBearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.header = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self.header), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self.header), request)


@pytest.fixture(scope="module")
async def auth_server(
    settings_for: Callable[..., Settings], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Application]:
    """A server that refuses every call without a known bearer token."""
    principals = write_principals(tmp_path_factory.mktemp("hooks") / "principals.toml", [ALICE])
    app = await Application.start(
        settings_for(database_url, auth_tokens_file=str(principals), rate_limit_per_second=0)
    )
    yield app
    await app.stop(grace_seconds=1.0)


async def test_an_interceptor_authenticates_every_call_of_the_async_client(
    auth_server: Application, project_id: str
) -> None:
    target = f"127.0.0.1:{auth_server.port}"
    async with Client(target, timeout=RPC_TIMEOUT) as bare:
        with pytest.raises(UnauthenticatedError):
            await bare.list_jobs()
    async with Client(
        target, timeout=RPC_TIMEOUT, interceptors=[BearerToken(ALICE.token), StreamBearerToken(ALICE.token)]
    ) as client:
        job = await client.submit_job(
            project_id=project_id, goal="hooked", daily_budget_microdollars=1_000_000, agent=AGENT
        )
        assert job.owner_id == "alice", "the server authenticated the token the interceptor added"
        stream = client.watch_job_events(job.job_id, after_sequence=0)
        first = await asyncio.wait_for(anext(stream), RPC_TIMEOUT)
        await stream.aclose()
        assert first.snapshot.job_id == job.job_id, "streams pass the interceptor too"


async def test_a_logging_interceptor_sees_every_call_and_its_outcome(
    app: Application, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.client.calls")
    async with Client(f"127.0.0.1:{app.port}", timeout=RPC_TIMEOUT, interceptors=[CallLog()]) as client:
        await client.list_jobs()
        with pytest.raises(Exception, match="NOT_FOUND"):
            await client.get_job("00000000-0000-4000-8000-00000000beef")
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.client.calls"]
    assert len(lines) == 2
    assert lines[0].startswith("/cofounder.agent.v1.AgentControlService/ListJobs OK timeout=")
    assert lines[1].startswith("/cofounder.agent.v1.AgentControlService/GetJob NOT_FOUND")
    assert float(lines[0].rsplit("=", 1)[1]) == pytest.approx(RPC_TIMEOUT, abs=1.0)


async def test_request_ids_an_interceptor_adds_are_in_the_servers_access_log(
    app: Application, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cofounder_server.observability.rpc")
    caplog.handler.addFilter(logs.ContextFilter())  # the server's log fields, as its handlers get them
    request_ids = RequestIds()
    async with Client(f"127.0.0.1:{app.port}", timeout=RPC_TIMEOUT, interceptors=[request_ids]) as client:
        await client.list_jobs()
        await client.list_jobs()
    logged = [
        getattr(record, "request_id", None)
        for record in caplog.records
        if record.name == "cofounder_server.observability.rpc" and "/ListJobs" in record.getMessage()
    ]
    assert request_ids.sent == ["req-1", "req-2"]
    assert logged == request_ids.sent


async def test_a_sync_interceptor_authenticates_the_sync_facade(
    auth_server: Application, project_id: str
) -> None:
    target = f"127.0.0.1:{auth_server.port}"

    def calls() -> tuple[str, list[str]]:
        with SyncClient(target, timeout=RPC_TIMEOUT, interceptors=[SyncBearerToken(ALICE.token)]) as client:
            job = client.submit_job(
                project_id=project_id, goal="hooked", daily_budget_microdollars=1_000_000, agent=AGENT
            )
            listed = [j.job_id for j in client.iter_jobs(project_id=project_id)]
            return job.owner_id, listed

    owner, listed = await asyncio.to_thread(calls)
    assert owner == "alice"
    assert len(listed) == 1

    def refused() -> None:
        with SyncClient(target, timeout=RPC_TIMEOUT) as client:
            client.list_jobs()

    with pytest.raises(UnauthenticatedError):
        await asyncio.to_thread(refused)
