"""The server process: health, reflection, start-up on embedded defaults, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.app import Application
from cofounder_server.live.engine import EmbeddedRedis
from tests.support import (
    EXTERNAL_DATABASE,
    EXTERNAL_REDIS,
    RPC_TIMEOUT,
    eventually,
    free_port,
    scripted_agent,
)

SERVICES = ("cofounder.agent.v1.AgentControlService", "cofounder.agent.v1.EscalationService")


async def test_health_reports_serving_for_the_server_and_each_service(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICES):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_every_service(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    call = stub.ServerReflectionInfo(requests(), timeout=RPC_TIMEOUT)
    response = await call.read()
    call.cancel()

    names = {s.name for s in response.list_services_response.service}
    assert set(SERVICES) | {"grpc.health.v1.Health"} <= names


REFLECTION_VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")


async def reflect(channel, version: str, *requests: reflection_pb2.ServerReflectionRequest) -> list:
    """Raw reflection requests to ``version``'s service; v1 is v1alpha's messages on the wire."""
    method = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = method(iter(requests), timeout=RPC_TIMEOUT)
    return [response async for response in call]


def files_of(response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    return {file.name: file for file in files}


@pytest.mark.parametrize("version", REFLECTION_VERSIONS)
async def test_reflection_v1_and_v1alpha_list_services_and_resolve_error_details(channel, version) -> None:
    listed, bad_request, own = await reflect(
        channel,
        version,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.BadRequest"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{version}.ServerReflection"),
    )

    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        *SERVICES,
        "grpc.health.v1.Health",
        *(f"{v}.ServerReflection" for v in REFLECTION_VERSIONS),
    }
    error_details = files_of(bad_request)["google/rpc/error_details.proto"]
    assert {"BadRequest", "ErrorInfo", "RetryInfo", "ResourceInfo", "QuotaFailure"} <= {
        m.name for m in error_details.message_type
    }
    reflection_file = next(f for f in files_of(own).values() if f.package == version)
    assert [s.name for s in reflection_file.service] == ["ServerReflection"]
    assert reflection_file.service[0].method[0].input_type == f".{version}.ServerReflectionRequest"


async def test_health_list_reports_every_service(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.List(health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)

    statuses = {name: s.status for name, s in response.statuses.items()}
    assert statuses == dict.fromkeys(("", *SERVICES), health_pb2.HealthCheckResponse.SERVING)


async def test_a_second_server_cannot_take_the_same_port(app, settings_for) -> None:
    with pytest.raises(SystemExit, match="cannot listen"):
        await Application.start(settings_for(listen=f"127.0.0.1:{app.port}"))


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    try:
        return b"State:\tZ" not in Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(bool(EXTERNAL_REDIS or EXTERNAL_DATABASE), reason="exercises the embedded defaults")
async def test_the_command_serves_on_embedded_defaults_and_drains_on_sigterm(tmp_path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    # A file, not a pipe: a pipe nobody reads while the server runs fills up and blocks its logging.
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cofounder_server",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            env=env,
            stderr=log,
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def check() -> object:
                try:
                    return (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
                except grpc.aio.AioRpcError as error:
                    return error.code()

            await eventually(check, lambda s: s == health_pb2.HealthCheckResponse.SERVING, within=30)
            assert (data_dir / "cofounder.db").exists()
            redis_children = processes_mentioning(str(data_dir.resolve()))
            assert redis_children, "the embedded Redis engine should run with its socket in the data dir"
            jobs = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            listed = await jobs.ListJobs(pb.ListJobsRequest(), timeout=RPC_TIMEOUT)
            assert list(listed.jobs) == []

            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICES[0]))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            process.send_signal(signal.SIGTERM)
            update = await asyncio.wait_for(watch.read(), RPC_TIMEOUT)
            assert update is grpc.aio.EOF or update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

        code = await asyncio.wait_for(process.wait(), 30)
        stderr = log_path.read_text()
        assert code == 0, stderr
        assert "stopped" in stderr
        assert not any(is_running(pid) for pid in redis_children)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_redis_outage_is_not_serving_and_unavailable_then_recovers(
    settings_for, database_url, tmp_path
) -> None:
    engine = EmbeddedRedis(tmp_path / "redis")
    redis_url = await engine.start()
    app = await Application.start(settings_for(database_url=database_url, redis_url=redis_url))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            jobs = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            job = (
                await jobs.SubmitJob(
                    pb.SubmitJobRequest(
                        project_id="outage",
                        goal="survive",
                        daily_budget_microdollars=1,
                        agent=scripted_agent(),
                    ),
                    timeout=RPC_TIMEOUT,
                )
            ).job

            async def overall() -> int:
                return int((await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)).status)

            async def job_status() -> grpc.StatusCode:
                try:
                    await jobs.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            assert await overall() == health_pb2.HealthCheckResponse.SERVING
            await engine.stop()

            await eventually(overall, lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING)
            # Watching needs Redis's pub/sub; GetJobStatus answers from SQL meanwhile.
            watch = jobs.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch.read()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            status = rpc_status.from_call(caught.value)
            assert status is not None
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)

            await engine.start()
            await eventually(overall, lambda s: s == health_pb2.HealthCheckResponse.SERVING)
            await eventually(job_status, lambda code: code == grpc.StatusCode.OK)
    finally:
        await app.stop(grace_seconds=1.0)
        await engine.stop()
