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
from cofounder_server.auth.limits import RateLimiter
from cofounder_server.auth.security import Security
from cofounder_server.config import Settings
from cofounder_server.domain.errors import ResourceExhausted
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
    open_streams = server.security.gate.limits.streams.open_streams

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


async def test_a_service_has_an_overall_rate_however_many_users_it_names(limited) -> None:
    app, monotonic = limited  # defaults for services: 200 requests per second, bursts of 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        jobs = pb_grpc.AgentControlServiceStub(channel)

        async def list_for(user: str, caller=BILLING) -> None:
            await jobs.ListJobs(pb.ListJobsRequest(), metadata=caller.metadata(user), timeout=RPC_TIMEOUT)

        refused: list[int] = []
        for n in range(300):
            try:
                await list_for(f"made-up-{n}")
            except grpc.aio.AioRpcError as error:
                refused.append(n)
                failure = failure_of(error)
        assert refused == list(range(200, 300))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.reason == "RATE_LIMITED"
        assert failure.quota_subjects == ("service:billing-backend",)
        assert failure.retry_delay == pytest.approx(0.005)

        # Users calling for themselves are not held to the service's budget.
        await jobs.ListJobs(pb.ListJobsRequest(), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT)
        monotonic.advance(0.01)  # two tokens' worth: a float sum may fall a hair short of one
        await list_for("made-up-300")
        with pytest.raises(grpc.aio.AioRpcError):
            await list_for("made-up-301")


async def test_a_service_has_an_overall_stream_cap(test_server) -> None:
    server = await test_server(max_streams_per_principal=5, max_streams_per_service=2)
    limits = server.security.gate.limits

    async def watch_for(user: str):
        call = server.stub.WatchJobEvents(
            pb.WatchJobEventsRequest(job_id="wait"), metadata=BILLING.metadata(user)
        )
        await asyncio.wait_for(call.read(), RPC_TIMEOUT)
        return call

    first = await watch_for("u1")
    await watch_for("u2")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_for("u3")
    refused = failure_of(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
    assert refused.quota_subjects == ("service:billing-backend",)
    # The refused stream holds no slot of its user.
    assert limits.streams.open_streams("u3") == 0
    assert limits.service_streams.open_streams("billing-backend") == 2

    first.cancel()
    await eventually(
        lambda: asyncio.sleep(0, limits.service_streams.open_streams("billing-backend")), lambda n: n == 1
    )
    await watch_for("u3")
    assert limits.streams.open_streams("u1") == 0


def gate_for(tmp_path: Path, monotonic: FakeMonotonic, **settings: object):
    principals = write_principals(tmp_path / "principals.toml", CALLERS)
    return Security.from_settings(
        Settings(auth_tokens_file=str(principals), **settings),  # type: ignore[arg-type]
        monotonic,
    ).gate


def test_a_call_refused_for_its_user_spends_nothing_of_its_service(tmp_path: Path) -> None:
    monotonic = FakeMonotonic()
    gate = gate_for(
        tmp_path,
        monotonic,
        rate_limit_per_second=1.0,
        rate_limit_burst=1,
        service_rate_limit_per_second=1.0,
        service_rate_limit_burst=2,
    )
    gate.admit("m", BILLING.metadata("carol"), {})
    for _ in range(5):  # carol's runaway dashboard
        with pytest.raises(ResourceExhausted) as caught:
            gate.admit("m", BILLING.metadata("carol"), {})
        assert caught.value.subject == "principal:carol"
    gate.admit("m", BILLING.metadata("dave"), {})  # the service's second token is still there
    with pytest.raises(ResourceExhausted) as caught:
        gate.admit("m", BILLING.metadata("erin"), {})
    assert caught.value.subject == "service:billing-backend"


def test_the_rate_table_stays_bounded_however_many_keys_are_invented() -> None:
    monotonic = FakeMonotonic()
    # Each key's one call takes a second to refill, so 1,000 keys a second fill the table.
    limiter = RateLimiter(1.0, 1, monotonic, max_keys=1000)

    admitted = 0
    for n in range(100_000):
        if limiter.acquire(f"invented-{n}") == 0.0:
            admitted += 1
        assert len(limiter) <= 1000
        if n % 32 == 31:
            monotonic.advance(1 / 64)  # 2,048 new keys a second: twice what fits
    assert len(limiter) == 1000
    # Refilled buckets made room for new keys all along; only the excess waited.
    assert 48_000 <= admitted <= 50_000

    # Once every bucket has refilled, the table empties as keys come and go.
    monotonic.advance(1.0)
    assert limiter.acquire("late") == 0.0
    assert len(limiter) == 1


def test_a_flood_of_invented_keys_cannot_reset_a_spent_bucket() -> None:
    monotonic = FakeMonotonic()
    limiter = RateLimiter(1.0, 10, monotonic, max_keys=100)
    for _ in range(10):
        assert limiter.acquire("alice") == 0.0
    assert limiter.acquire("alice") == pytest.approx(1.0)

    refused_new_keys = 0
    for n in range(100_000):
        if limiter.acquire(f"invented-{n}") > 0:
            refused_new_keys += 1
        if n % 10_000 == 9_999:
            monotonic.advance(1 / 16)
    assert len(limiter) <= 100
    # 0.625 s later alice still waits for her own refill; her spent bucket was kept, not reset.
    assert limiter.tracks("alice")
    assert limiter.acquire("alice") == 0.375
    # The table was full of buckets in use, so new keys waited rather than evicting one.
    assert refused_new_keys == 100_000 - 99

    monotonic.advance(0.375)
    assert limiter.acquire("alice") == 0.0


def test_a_service_inventing_users_keeps_the_gate_bounded_and_cannot_reset_a_user(tmp_path: Path) -> None:
    monotonic = FakeMonotonic()
    gate = gate_for(
        tmp_path,
        monotonic,
        rate_limit_per_second=1.0,
        rate_limit_burst=2,
        service_rate_limit_per_second=0,  # only the table's cap is under test here
        rate_limit_tracked_principals=50,
    )
    table = gate.limits.rate
    for _ in range(2):
        gate.admit("m", ALICE.metadata(), {})

    refused = []
    for n in range(5_000):  # 100,000 are invented in the limiter's own test; each admit here hashes a token
        try:
            gate.admit("m", BILLING.metadata(f"invented-{n}"), {})
        except ResourceExhausted as error:
            refused.append(error)
        assert len(table) <= 50
    assert len(refused) == 5_000 - 49
    assert "holding the request rates of 50 principals" in refused[-1].message
    assert refused[-1].retry_after_seconds == 2.0  # until alice's bucket has refilled
    with pytest.raises(ResourceExhausted) as caught:
        gate.admit("m", ALICE.metadata(), {})  # still spent, not reset
    assert caught.value.subject == "principal:alice"
