"""Who a call is: tokens, services acting for users, clear failures, open health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2, escalation_service_pb2
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from tests.auth.support import ALICE, BILLING, BOB, CALLERS, ONCALL, failure_of, new_token, submit_request
from tests.support import RPC_TIMEOUT

SERVICES = (
    agent_control_service_pb2.DESCRIPTOR.services_by_name["AgentControlService"],
    escalation_service_pb2.DESCRIPTOR.services_by_name["EscalationService"],
)
EVERY_METHOD = [(service.full_name, method) for service in SERVICES for method in service.methods]


async def invoke(channel: grpc.aio.Channel, service: str, method, metadata) -> None:
    """Call any method with an empty request (a stream: read its first message); raise on failure."""
    path = f"/{service}/{method.name}"
    if not method.server_streaming:
        await channel.unary_unary(path)(b"", metadata=metadata, timeout=RPC_TIMEOUT)
        return
    call = channel.unary_stream(path)(b"", metadata=metadata, timeout=RPC_TIMEOUT)
    try:
        await call.read()
    finally:
        call.cancel()


async def status_of(channel: grpc.aio.Channel, service: str, method, metadata) -> grpc.StatusCode:
    """The status code :func:`invoke` ends with."""
    try:
        await invoke(channel, service, method, metadata)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), EVERY_METHOD, ids=[m.full_name for _, m in EVERY_METHOD])
@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "CREDENTIALS_MISSING"),
        ((("authorization", f"Bearer {new_token()}"),), "CREDENTIALS_UNKNOWN"),
        ((("authorization", f"Basic {ALICE.token}"),), "AUTHORIZATION_MALFORMED"),
        ((("authorization", "Bearer"),), "AUTHORIZATION_MALFORMED"),
        (ALICE.metadata() + BOB.metadata(), "AUTHORIZATION_MALFORMED"),
    ],
    ids=["missing", "unknown", "other-scheme", "empty", "two-tokens"],
)
async def test_every_rpc_refuses_calls_without_a_valid_token(
    auth_channel, service, method, metadata, reason
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(auth_channel, service, method, metadata)

    failure = failure_of(caught.value)
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED, failure
    assert failure.reason == reason


@pytest.mark.parametrize(("service", "method"), EVERY_METHOD, ids=[m.full_name for _, m in EVERY_METHOD])
async def test_every_rpc_admits_a_valid_token(auth_channel, service, method) -> None:
    code = await status_of(auth_channel, service, method, ALICE.metadata())
    # Past the gate an empty request is fine, invalid, or for an RPC that is not built yet.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED)


async def test_the_token_scheme_is_case_insensitive(jobs) -> None:
    metadata = (("authorization", f"bearer {ALICE.token}"),)
    await jobs.ListJobs(pb.ListJobsRequest(), metadata=metadata, timeout=RPC_TIMEOUT)


async def test_health_and_reflection_need_no_token(auth_channel) -> None:
    health = health_pb2_grpc.HealthStub(auth_channel)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(auth_channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    call = reflection.ServerReflectionInfo(requests(), timeout=RPC_TIMEOUT)
    listed = await call.read()
    call.cancel()
    assert "cofounder.agent.v1.AgentControlService" in {s.name for s in listed.list_services_response.service}


async def test_a_user_and_an_operator_act_as_themselves(jobs, project_id) -> None:
    for caller in (ALICE, ONCALL):
        response = await jobs.SubmitJob(
            submit_request(project_id), metadata=caller.metadata(), timeout=RPC_TIMEOUT
        )
        assert response.job.owner_id == caller.principal


async def test_a_service_acts_as_the_user_it_names(jobs, project_id) -> None:
    submitted = await jobs.SubmitJob(
        submit_request(project_id), metadata=BILLING.metadata(on_behalf_of="carol"), timeout=RPC_TIMEOUT
    )
    assert submitted.job.owner_id == "carol"

    # The user it names can be one with a token of their own: the same tenant.
    as_alice = await jobs.SubmitJob(
        submit_request(project_id), metadata=BILLING.metadata(on_behalf_of="alice"), timeout=RPC_TIMEOUT
    )
    listed = await jobs.ListJobs(
        pb.ListJobsRequest(project_id=project_id), metadata=ALICE.metadata(), timeout=RPC_TIMEOUT
    )
    assert [job.job_id for job in listed.jobs] == [as_alice.job.job_id]


@pytest.mark.parametrize(
    ("caller", "on_behalf_of", "code", "reason"),
    [
        (BILLING, None, grpc.StatusCode.PERMISSION_DENIED, "ON_BEHALF_OF_REQUIRED"),
        (BILLING, "oncall", grpc.StatusCode.PERMISSION_DENIED, "ON_BEHALF_OF_NOT_A_USER"),
        (BILLING, "billing-backend", grpc.StatusCode.PERMISSION_DENIED, "ON_BEHALF_OF_NOT_A_USER"),
        (BILLING, "not a user id", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (ALICE, "bob", grpc.StatusCode.PERMISSION_DENIED, "ON_BEHALF_OF_NOT_ALLOWED"),
        (ONCALL, "alice", grpc.StatusCode.PERMISSION_DENIED, "ON_BEHALF_OF_NOT_ALLOWED"),
    ],
    ids=[
        "service-alone",
        "service-as-operator",
        "service-as-itself",
        "bad-user-id",
        "user-for-other",
        "operator-for-user",
    ],
)
async def test_acting_on_behalf_of_is_only_for_services_and_only_for_users(
    jobs, caller, on_behalf_of, code, reason
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.ListJobs(pb.ListJobsRequest(), metadata=caller.metadata(on_behalf_of), timeout=RPC_TIMEOUT)

    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (code, reason)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert failure.field_violations == ("metadata.cofounder-on-behalf-of",)


async def test_a_service_naming_two_users_is_invalid(jobs) -> None:
    metadata = (*BILLING.metadata("alice"), ("cofounder-on-behalf-of", "bob"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.ListJobs(pb.ListJobsRequest(), metadata=metadata, timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tokens_never_reach_the_log(jobs, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    stranger = new_token()
    for metadata in (ALICE.metadata(), (("authorization", f"Bearer {stranger}"),), BILLING.metadata()):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await jobs.ListJobs(pb.ListJobsRequest(), metadata=metadata, timeout=RPC_TIMEOUT)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "refused" in logged  # the refusals were logged, just without secrets
    for token in (stranger, *(caller.token for caller in CALLERS)):
        assert token not in logged


async def test_concurrent_calls_of_different_principals_never_see_each_other(jobs, project_id) -> None:
    async def submit_and_list(caller) -> set[str]:
        await jobs.SubmitJob(submit_request(project_id), metadata=caller.metadata(), timeout=RPC_TIMEOUT)
        listed = await jobs.ListJobs(
            pb.ListJobsRequest(project_id=project_id), metadata=caller.metadata(), timeout=RPC_TIMEOUT
        )
        return {job.owner_id for job in listed.jobs}

    owners = await asyncio.gather(*(submit_and_list(caller) for caller in [ALICE, BOB] * 20))

    assert owners == [{"alice"}, {"bob"}] * 20
