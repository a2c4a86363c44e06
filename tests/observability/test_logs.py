"""Structured logs: a real server process's stderr, parsed line by line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import (
    agent_control_service_pb2_grpc,
    escalation_service_pb2,
    escalation_service_pb2_grpc,
    job_pb2,
)
from cofounder_server import cli
from cofounder_server.observability import logs
from tests.auth.support import Caller, new_token, write_principals
from tests.executor.support import TERMINAL, narrate, turn
from tests.support import EXTERNAL_DATABASE, EXTERNAL_REDIS, RPC_TIMEOUT, eventually, free_port

ESCALATION_ID = "6f1c2b9e-3d4a-4e5f-8a7b-9c0d1e2f3a4b"


@pytest.mark.skipif(
    bool(EXTERNAL_REDIS or EXTERNAL_DATABASE), reason="runs the command on its embedded defaults"
)
async def test_a_server_process_logs_json_lines_with_ids_and_never_secrets(tmp_path: Path) -> None:
    alice = Caller("alice", "user", new_token())
    stranger_token = new_token()
    secret = uuid.uuid4().hex
    goal, thought, tool_text = f"goal-{secret}", f"thought-{secret}", f"tool-{secret}"
    log_path = tmp_path / "server.log"  # a file: not a terminal, so JSON lines by default
    job_id = await _serve_and_work(tmp_path, log_path, alice, stranger_token, (goal, thought, tool_text))

    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines()]  # every line is one JSON event
    assert all({"time", "level", "logger", "message"} <= set(event) for event in events)
    calls = [e for e in events if e["logger"] == "cofounder_server.observability.rpc"]
    submit = [e for e in calls if e["method"].endswith("/SubmitJob")]
    assert len(submit) == 1, "the access log of SubmitJob"
    assert submit[0]["request_id"] == "req-from-client-1"
    assert submit[0]["principal"] == "alice"
    assert "/SubmitJob OK in " in submit[0]["message"]
    gets = [e for e in calls if e["method"].endswith("/GetJob")]
    assert gets
    assert all(e["job_id"] == job_id for e in gets)
    assert len({e["request_id"] for e in gets}) == len(gets), "each call has a request id of its own"
    ended = [e for e in events if e["logger"] == "cofounder_server.executor.loop" and "ended" in e["message"]]
    assert ended
    assert ended[0]["job_id"] == job_id
    assert ended[0]["runner_id"].startswith("runner-")
    assert any(e["level"] == "debug" and e.get("method", "").endswith("/ListJobs") for e in events)
    asked = [e for e in calls if e["method"].endswith("/GetEscalation")]
    assert [e["escalation_id"] for e in asked] == [ESCALATION_ID]
    for secret_text in (goal, thought, tool_text, alice.token, stranger_token, secret):
        assert secret_text not in text
    for token in (alice.token, stranger_token):
        assert hashlib.sha256(token.encode()).hexdigest() not in text


async def _serve_and_work(
    tmp_path: Path, log_path: Path, alice: Caller, stranger_token: str, texts: tuple[str, str, str]
) -> str:
    """Run the server command with stderr to ``log_path``; submit a job as ``alice`` whose
    goal, thinking and tool input are ``texts``, wait for it, make a refused call, stop."""
    goal, thought, tool_text = texts
    principals = write_principals(tmp_path / "principals.toml", [alice])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cofounder_server",
            *("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")),
            *("--auth-tokens-file", str(principals), "--claim-interval-seconds", "0.2"),
            *("--log-level", "cofounder_server=debug,root=info"),
            env=env,
            stderr=log,
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> object:
                try:
                    return (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
                except grpc.aio.AioRpcError as error:
                    return error.code()

            await eventually(serving, lambda s: s == health_pb2.HealthCheckResponse.SERVING, within=30)
            stub = agent_control_service_pb2_grpc.AgentControlServiceStub(channel)
            config = struct_pb2.Struct()
            config.update({"turns": [turn(thought, [narrate(tool_text)]), turn("done")]})
            request = pb.SubmitJobRequest(
                project_id="logs",
                goal=goal,
                daily_budget_microdollars=10**9,
                agent=job_pb2.AgentSpec(brain="scripted", model="m", config=config),
            )
            metadata = (*alice.metadata(), ("x-request-id", "req-from-client-1"))
            job = (await stub.SubmitJob(request, metadata=metadata, timeout=RPC_TIMEOUT)).job

            async def job_status() -> int:
                get = pb.GetJobRequest(job_id=job.job_id)
                return (await stub.GetJob(get, metadata=alice.metadata(), timeout=RPC_TIMEOUT)).job.status

            await eventually(job_status, lambda s: s in TERMINAL, within=30)
            escalations = escalation_service_pb2_grpc.EscalationServiceStub(channel)
            asked = escalation_service_pb2.GetEscalationRequest(escalation_id=ESCALATION_ID)
            with pytest.raises(grpc.aio.AioRpcError):  # UNIMPLEMENTED, yet logged with the id
                await escalations.GetEscalation(asked, metadata=alice.metadata(), timeout=RPC_TIMEOUT)
            stranger = (("authorization", f"Bearer {stranger_token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListJobs(pb.ListJobsRequest(), metadata=stranger, timeout=RPC_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return str(job.job_id)


def test_text_on_a_terminal_json_otherwise_and_either_when_forced() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    logger = logging.getLogger("cofounder_server.test_logs")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for stream, log_format, as_json in (
            (io.StringIO(), "auto", True),
            (Terminal(), "auto", False),
            (Terminal(), "json", True),
            (io.StringIO(), "text", False),
        ):
            logs.configure("info", log_format, stream)
            token = logs.job_id.set("job-1")
            try:
                logger.info("hello %s", "world")
            finally:
                logs.job_id.reset(token)
            line = stream.getvalue().strip()
            if as_json:
                assert json.loads(line)["job_id"] == "job-1"
                assert json.loads(line)["message"] == "hello world"
            else:
                assert line.endswith("cofounder_server.test_logs: hello world [job_id=job-1]")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_levels_per_logger() -> None:
    assert logs.parse_levels("INFO") == {"": logging.INFO}
    assert logs.parse_levels("cofounder_server.executor=debug, root=warning") == {
        "cofounder_server.executor": logging.DEBUG,
        "": logging.WARNING,
    }
    for bad in ("", "loud", "cofounder_server=", "=debug"):
        with pytest.raises(ValueError, match=r"LEVEL|no level"):
            logs.parse_levels(bad)


def test_the_command_refuses_a_bad_level_or_format_before_starting() -> None:
    for flags, refusal in (
        (["--log-level", "loud"], "invalid --log-level 'loud'"),
        (["--log-format", "xml"], "invalid --log-format 'xml'"),
    ):
        with pytest.raises(SystemExit, match=refusal):
            cli.main(flags)
