"""The servers under test, how each is started, and the real calls that check their answers."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.getjobstatus.shared_redis import BUDGET_PCT
from bench.harness import (
    PYTHON,
    SERVER_CORE,
    free_port,
    health_serving,
    pinned,
    server_argv,
    server_environment,
)
from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2

GRPC_METHOD = "/cofounder.agent.v1.AgentControlService/GetJobStatus"
GRPC_PREFIX_BYTES = 5  # gRPC message framing: 1 byte compressed flag + 4 bytes big-endian length


class CheckFailed(RuntimeError):
    """A server's answer was not the expected success."""


@dataclass
class Target:
    """One server under test: how to start it, check it, and load it."""

    name: str
    description: str
    protocol: str  # "grpc" or "h1"
    port: int
    argv: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    expected_bytes: int = 0  # data bytes h2load must count per successful response

    @property
    def url(self) -> str:
        """The URL h2load requests."""
        if self.protocol == "grpc":
            return f"http://127.0.0.1:{self.port}{GRPC_METHOD}"
        return f"http://127.0.0.1:{self.port}/api/jobs/{{job_id}}/status"


def grpc_status_check(port: int, job_id: str, *, expect_working: bool) -> int:
    """One real GetJobStatus through the generated Python stub; returns the frame size.

    h2load sees only HTTP status 200, while gRPC puts its status in trailers: this call is what
    proves the server answers with a real snapshot and OK. The returned size (prefix + message)
    is then compared with the bytes h2load received per request.
    """

    async def call() -> pb.GetJobStatusResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AgentControlServiceStub(channel)
            return await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=5)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        raise CheckFailed(f"GetJobStatus failed: {error.code()} {error.details()}") from error
    status = response.status
    problems = []
    if status.job_id != job_id:
        problems.append(f"job_id {status.job_id!r}")
    if not status.HasField("budget_percent") or status.budget_percent != BUDGET_PCT:
        problems.append(
            f"budget_percent {status.budget_percent if status.HasField('budget_percent') else None}"
        )
    terminal = status.job_status in (
        job_pb2.JOB_STATUS_READY,
        job_pb2.JOB_STATUS_FAILED,
        job_pb2.JOB_STATUS_CANCELLED,
    )
    if expect_working and not terminal and status.agent_state != job_pb2.AGENT_STATE_WORKING:
        problems.append(f"agent_state {job_pb2.AgentState.Name(status.agent_state)}")
    if problems:
        raise CheckFailed("unexpected snapshot: " + ", ".join(problems) + f"\n{status}")
    return GRPC_PREFIX_BYTES + len(response.SerializeToString())


def http_status_check(port: int, job_id: str) -> int:
    """One real GET of the predecessor endpoint; returns the body size."""
    url = f"http://127.0.0.1:{port}/api/jobs/{job_id}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read()
    except (urllib.error.URLError, OSError) as error:
        raise CheckFailed(f"GET {url} failed: {error}") from error
    expected = {"state": "working", "budget_pct": BUDGET_PCT, "wake_at": None}
    if json.loads(body) != expected:
        raise CheckFailed(f"unexpected body {body!r}, wanted {expected}")
    return len(body)


def wait_until(
    check: Callable[[], object], process: subprocess.Popen[bytes], timeout: float, what: str
) -> None:
    """Retry ``check`` until it passes, the process dies, or ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"{what} exited with code {process.returncode} while starting")
        try:
            check()
            return
        except Exception as error:  # not up yet: connection refused, NOT_SERVING, ...
            last = error
            time.sleep(0.2)
    raise CheckFailed(f"{what} not ready after {timeout:.0f} s: {last}")


def grpc_health_serving(port: int) -> None:
    """Raise unless ``grpc.health.v1`` reports the whole server SERVING."""
    if not asyncio.run(health_serving(port)):
        raise CheckFailed("health: not SERVING")


def submit_job(port: int) -> str:
    """Create the benchmark's job on the real server and return its id."""
    request = pb.SubmitJobRequest(
        request_id=str(uuid.uuid4()),
        project_id="bench",
        goal="benchmark GetJobStatus",
        daily_budget_microdollars=10_000_000,
        agent=job_pb2.AgentSpec(brain="scripted", config={"turns": [{"text": "done"}]}),
    )

    async def call() -> pb.SubmitJobResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await pb_grpc.AgentControlServiceStub(channel).SubmitJob(request, timeout=10)

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        raise CheckFailed(f"SubmitJob failed: {error.code()} {error.details()}") from error
    return response.job.job_id


def uvicorn_stack(http: str) -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn will use, resolved as its ``auto`` does."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def cofounder_target(workdir: Path, redis_url: str, nice: int) -> Target:
    """The real server on core 0, reading the shared Redis."""
    port = free_port()
    # An API replica: an agent running the job would finish it, and a finished job's status no
    # longer shows the live keys this benchmark writes.
    flags = ["--redis-url", redis_url, "--executor-enabled", "false"]
    argv = server_argv(port, workdir / "cofounder-data", flags, core=SERVER_CORE, nice=nice)
    env = server_environment()
    return Target("cofounder", "cofounder-server GetJobStatus (grpc.aio)", "grpc", port, argv, env)


def predecessor_target(redis_url: str, nice: int, http: str, variant: bool = False) -> Target:
    """FastAPI + uvicorn, one worker on core 0, on the HTTP parser ``http``; a ``variant`` is
    the sensitivity row (named after its parser) beside the main predecessor row."""
    port = free_port()
    env = dict(os.environ, BENCH_REDIS_URL=redis_url)
    argv = [
        *pinned(SERVER_CORE, nice), PYTHON, "-m", "uvicorn", "bench.predecessor_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", "auto", "--http", http,
        # No access log: the gRPC servers log nothing per request either, and a log line per
        # request would charge the predecessor for something unrelated to its design.
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    if not variant:
        return Target(
            "predecessor", "predecessor FastAPI + uvicorn, 3 sequential GETs", "h1", port, argv, env
        )
    return Target(f"predecessor-{http}", f"predecessor on uvicorn --http {http}", "h1", port, argv, env)


def noio_target(job_id: str, nice: int) -> Target:
    """The grpc.aio no-I/O ceiling on core 0, answering for ``job_id``."""
    port = free_port()
    argv = [
        *pinned(SERVER_CORE, nice), PYTHON, "-m", "bench.noio_server",
        "--listen", f"127.0.0.1:{port}", "--job-id", job_id,
    ]  # fmt: skip
    return Target("noio", "grpc.aio no-I/O reference (constant answer)", "grpc", port, argv)
