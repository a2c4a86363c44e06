"""Per-principal request rate and open-stream caps: RESOURCE_EXHAUSTED with retry information."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2
from cofounder_client import Client, CofounderError
from cofounder_server.api.context import principal_of
from cofounder_server.api.handlers import service_handler
from cofounder_server.app import AGENT_CONTROL, Application
from cofounder_server.auth.security import Security
from cofounder_server.config import Settings
from tests.auth.support import (
    ALICE,
    BILLING,
    BOB,
    CALLERS,
    ONCALL,
    FakeMonotonic,
    failure_of,
    write_principals,
)
from tests.support import RPC_TIMEOUT, eventually


@pytest.fixture
async def limited(
    settings_for, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Application, FakeMonotonic]]:
    """A real server allowing 1 request per second with bursts of 2, timed by a fake clock."""
    monotonic = FakeMonotonic()
    settings = settings_for(
        database_url,
        auth_tokens_file=str(write_principals(tmp_path / "principals.toml", CALLERS)),
        rate_limit_per_second=1.0,
        rate_limit_burst=2,
    )
    app = await Application.start(settings, monotonic=monotonic)
    yield app, monotonic
    await app.stop(grace_seconds=1.0)


async def test_a_principal_over_its_rate_is_told_when_to_retry(limited) -> None:
    app, monotonic = limited
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        jobs = pb_grpc.AgentControlServiceStub(channel)

        async def list_as(caller, on_behalf_of: str | None = None) -> None:
            await jobs.ListJobs(
                pb.ListJobsRequest(), metadata=caller.metadata(on_behalf_of), timeout=RPC_TIMEOUT
            )

        await list_as(ALICE)
        await list_as(ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_as(ALICE)
        refused = failure_of(caught.value)
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.reason == "RATE_LIMITED"
        assert refused.retry_delay == pytest.approx(1.0)
        assert refused.quota_subjects == ("principal:alice",)

        # Others have budgets of their own: another user, and each end user of a service.
        await list_as(BOB)
        await list_as(BILLING, "carol")
        await list_as(BILLING, "dave")
        # Health is not a principal's call and is never limited.
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)

        monotonic.advance(0.5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_as(ALICE)
        assert failure_of(caught.value).retry_delay == pytest.approx(0.5)

        monotonic.advance(0.5)
        await list_as(ALICE)

    # The client library exposes the retry information.
    async with Client(f"127.0.0.1:{app.port}", token=ALICE.token, timeout=RPC_TIMEOUT) as client:
        with pytest.raises(CofounderError) as client_caught:
            await client.list_jobs()
    assert client_caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client_caught.value.reason == "RATE_LIMITED"
    assert client_caught.value.retry_delay == pytest.approx(1.0)


async def test_refused_credentials_spend_no_ones_budget(limited) -> None:
    app, _ = limited
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        jobs = pb_grpc.AgentControlServiceStub(channel)
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs.ListJobs(pb.ListJobsRequest(), metadata=BILLING.metadata(), timeout=RPC_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await jobs.ListJobs(pb.ListJobsRequest(), metadata=BILLING.metadata("carol"), timeout=RPC_TIMEOUT)


class StreamingServicer(pb_grpc.AgentControlServiceServicer):
    """WatchJobEvents streams one message then waits (or ends, for job id "end"); GetJob is operator-only."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def WatchJobEvents(
        self, request: pb.WatchJobEventsRequest, context
    ) -> AsyncIterator[pb.WatchJobEventsResponse]:
        yield pb.WatchJobEventsResponse()
        if request.job_id == "fail":
            raise RuntimeError("servicer bug")
        if request.job_id != "end":
            await self.release.wait()

    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.GetJobResponse:
        principal = principal_of(context)
        principal.require_operator("GetJob on the test servicer")
        return pb.GetJobResponse(job=job_pb2.Job(owner_id=principal.principal_id))


@dataclass
class GatedServer:
    channel: grpc.aio.Channel
    stub: pb_grpc.AgentControlServiceStub
    security: Security
    servicer: StreamingServicer


@pytest.fixture
async def test_server(tmp_path: Path) -> AsyncIterator[Callable[..., GatedServer]]:
    """Start a bare grpc.aio server whose test servicer is registered through service_handler."""
    started: list[tuple[grpc.aio.Server, grpc.aio.Channel, StreamingServicer]] = []

    async def start(gated: bool = True, **settings: object) -> GatedServer:
        principals = write_principals(tmp_path / "principals.toml", CALLERS)
        security = Security.from_settings(Settings(auth_tokens_file=str(principals), **settings))  # type: ignore[arg-type]
        servicer = StreamingServicer()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (service_handler(AGENT_CONTROL, servicer, security.gate if gated else None),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel, servicer))
        return GatedServer(channel, pb_grpc.AgentControlServiceStub(channel), security, servicer)

    yield start  # type: ignore[misc]
    for server, channel, servicer in started:
        servicer.release.set()
        await channel.close()
        await server.stop(None)


async def open_stream(stub, caller, job_id: str = "wait"):
    call = stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job_id), metadata=caller.metadata())
    await asyncio.wait_for(call.read(), RPC_TIMEOUT)
    return call


async def test_open_streams_are_capped_per_principal_and_freed_when_they_end(test_server) -> None:
    server = await test_server(max_streams_per_principal=2)
    open_streams = server.security.gate.stream_limiter.open_streams

    first = await open_stream(server.stub, ALICE)
    await open_stream(server.stub, ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_stream(server.stub, ALICE)
    refused = failure_of(caught.value)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "TOO_MANY_STREAMS"
    assert refused.retry_delay == pytest.approx(1.0)
    assert refused.quota_subjects == ("principal:alice",)
    assert open_streams("alice") == 2

    # Bob has streams of his own, and unary calls are not streams.
    await open_stream(server.stub, BOB)
    await server.stub.GetJob(pb.GetJobRequest(), metadata=ONCALL.metadata(), timeout=RPC_TIMEOUT)

    # A stream the client cancels frees its slot at once.
    first.cancel()
    await eventually(lambda: asyncio.sleep(0, open_streams("alice")), lambda n: n == 1)
    await open_stream(server.stub, ALICE)

    # So do streams the server ends, normally or with an error.
    await open_stream(server.stub, BOB, "end")
    failing = await open_stream(server.stub, BOB, "fail")
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(failing.read(), RPC_TIMEOUT)
    await eventually(lambda: asyncio.sleep(0, open_streams("bob")), lambda n: n == 1)


async def test_a_user_asking_for_an_operator_only_action_is_denied(test_server) -> None:
    server = await test_server()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetJob(pb.GetJobRequest(), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT)
    denied = failure_of(caught.value)
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OPERATOR_ONLY")

    allowed = await server.stub.GetJob(pb.GetJobRequest(), metadata=ONCALL.metadata(), timeout=RPC_TIMEOUT)
    assert allowed.job.owner_id == "oncall"


async def test_a_service_registered_without_a_gate_fails_closed(test_server) -> None:
    server = await test_server(gated=False)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stub.GetJob(pb.GetJobRequest(), metadata=ONCALL.metadata(), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
