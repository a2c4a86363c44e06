"""Running ``cofounder-server`` as a real process: spawn it, wait for health, read its stderr."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import EXTERNAL_REDIS


def server_argv(data_dir: Path, port: int, database_url: str = "", *extra: str) -> list[str]:
    """Flags for a server on ``data_dir`` and ``port``, on the external services when set."""
    argv = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    if EXTERNAL_REDIS:
        argv += ["--redis-url", EXTERNAL_REDIS]
    if database_url:
        argv += ["--database-url", database_url]
    return [*argv, *extra]


def _environment() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    # SIGTERM stops at once unless a test asks for the health-probe pause (by flag, which wins).
    environment["COFOUNDER_DRAIN_PAUSE_SECONDS"] = "0"
    return environment


async def spawn(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """Start the command; stderr goes to ``log_path`` (a file: a pipe nobody reads would fill)."""
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cofounder_server", *argv, env=_environment(), stderr=log
        )


async def run_to_exit(argv: list[str], within: float = 60.0) -> tuple[int, str]:
    """Run the command until it exits; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cofounder_server",
        *argv,
        env=_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


async def health_of(port: int) -> object:
    """The overall health status of the server on ``port``, or the error code of asking."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return response.status


async def stop(process: asyncio.subprocess.Process) -> None:
    """Kill the process if it still runs, and reap it."""
    if process.returncode is None:
        process.kill()
        await process.wait()
