"""The Dockerfile: hadolint finds nothing, the final stage runs the server as a non-root user
that receives SIGTERM itself, and the image's health check tells SERVING from anything else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cofounder_server.app import Application
from tests.support import free_port

from .support import DEPLOY, ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in logical]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_shell_form_entrypoint(tmp_path: Path) -> None:
    """The check above can fail: a shell-form ENTRYPOINT (SIGTERM to /bin/sh, not the server)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text().replace('ENTRYPOINT ["cofounder-server"]', "ENTRYPOINT cofounder-server")
    )
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3025" in result.stdout


def test_the_final_stage_runs_the_server_as_a_non_root_user_from_an_exec_form_entrypoint() -> None:
    stage = final_stage()
    assert stage[0][1].startswith("python:${PYTHON_VERSION}-slim")
    users = [args for name, args in stage if name == "USER"]
    assert users, "the final stage sets a user"
    assert users[-1].split(":")[0] not in ("0", "root")
    entrypoints = [args for name, args in stage if name == "ENTRYPOINT"]
    assert [json.loads(args) for args in entrypoints] == [["cofounder-server"]]
    run_lines = " ".join(args for name, args in stage if name == "RUN")
    for build_tool in ("apt-get", "gcc", "build-essential"):
        assert build_tool not in run_lines
    assert "--no-index" in run_lines, "the final stage installs only the builder's wheels"
    environment = " ".join(args for name, args in stage if name == "ENV")
    assert "COFOUNDER_LISTEN=0.0.0.0:50051" in environment
    exposed = " ".join(args for name, args in stage if name == "EXPOSE").split()
    assert exposed == ["50051", "9464"]


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "the context starts empty"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = [
        args.split()[0]
        for name, args in instructions(DOCKERFILE.read_text())
        if name == "COPY" and "--from" not in args
    ]
    assert copied, "the Dockerfile copies from the context"
    for source in copied:
        assert source.rstrip("/") in kept, f"{source} is excluded by .dockerignore"
        assert (ROOT / source).exists()


async def healthcheck(environ: dict[str, str]) -> int:
    """Run the image's HEALTHCHECK script with exactly these COFOUNDER_ variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")} | environ
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), env=environment, stdin=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 60)


async def test_the_healthcheck_passes_for_a_serving_server(app: Application) -> None:
    # The address the server binds in a container; the check asks on loopback, same port.
    assert await healthcheck({"COFOUNDER_LISTEN": f"0.0.0.0:{app.port}"}) == 0


async def test_with_tls_the_healthcheck_asks_only_whether_the_port_accepts(app: Application) -> None:
    tls = {"COFOUNDER_TLS_CERT_FILE": "/etc/cofounder/tls/tls.crt"}
    assert await healthcheck({"COFOUNDER_LISTEN": f"[::]:{app.port}", **tls}) == 0


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_the_healthcheck_fails_where_nothing_listens(tls: bool) -> None:
    environ = {"COFOUNDER_LISTEN": f"0.0.0.0:{free_port()}"}
    if tls:
        environ["COFOUNDER_TLS_CERT_FILE"] = "/etc/cofounder/tls/tls.crt"
    assert await healthcheck(environ) == 1


async def test_the_healthcheck_fails_for_a_server_that_is_not_serving() -> None:
    """A port that answers gRPC health with NOT_SERVING (a draining server)."""
    server = aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await healthcheck({"COFOUNDER_LISTEN": f"0.0.0.0:{port}"}) == 1
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await healthcheck({"COFOUNDER_LISTEN": f"0.0.0.0:{port}"}) == 0
    finally:
        await server.stop(None)
