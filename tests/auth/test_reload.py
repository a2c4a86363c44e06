"""Reloading the principals file (SIGHUP) without dropping connections or open streams."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder_server.app import Application
from tests.auth.support import Caller, new_token, write_principals
from tests.support import EXTERNAL_REDIS, RPC_TIMEOUT, eventually, free_port

OLD = Caller("alice", "user", new_token())
NEW = Caller("alice", "user", new_token())


async def code_of(jobs: pb_grpc.AgentControlServiceStub, caller: Caller) -> grpc.StatusCode:
    try:
        await jobs.ListJobs(pb.ListJobsRequest(), metadata=caller.metadata(), timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_reload_swaps_tokens_on_the_same_connection(
    settings_for, database_url, tmp_path, caplog
) -> None:
    path = write_principals(tmp_path / "principals.toml", [OLD])
    app = await Application.start(settings_for(database_url, auth_tokens_file=str(path)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            jobs = pb_grpc.AgentControlServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            await asyncio.wait_for(watch.read(), RPC_TIMEOUT)
            assert await code_of(jobs, OLD) == grpc.StatusCode.OK

            write_principals(path, [NEW])
            assert app.security.reload()
            assert await code_of(jobs, OLD) == grpc.StatusCode.UNAUTHENTICATED
            assert await code_of(jobs, NEW) == grpc.StatusCode.OK

            # A broken file is refused and the credentials in force stay, secrets unlogged.
            caplog.set_level(logging.INFO)
            path.write_text(f'[[tokens]]\nsha256 = "{NEW.token}"\nprincipal = "alice"\nrole = "user"\n')
            assert not app.security.reload()
            assert await code_of(jobs, NEW) == grpc.StatusCode.OK
            assert "NOT reloaded" in caplog.text
            assert NEW.token not in caplog.text

            # The connection was never dropped: a stream opened before the reloads is still open.
            assert not watch.done()
            watch.cancel()
    finally:
        await app.stop(grace_seconds=1.0)


async def test_sighup_reloads_the_running_command(database_url, tmp_path: Path) -> None:
    path = write_principals(tmp_path / "principals.toml", [OLD])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFOUNDER_")}
    argv = [
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "data"),
        "--auth-tokens-file",
        str(path),
    ]
    if EXTERNAL_REDIS:
        argv += ["--redis-url", EXTERNAL_REDIS]
    if database_url:
        argv += ["--database-url", database_url]
    # A file, not a pipe: a pipe nobody reads while the server runs fills up and blocks its logging.
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cofounder_server", *argv, env=env, stderr=log
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            jobs = pb_grpc.AgentControlServiceStub(channel)

            async def probe(caller: Caller) -> grpc.StatusCode:
                try:
                    return await code_of(jobs, caller)
                except TimeoutError:
                    return grpc.StatusCode.UNAVAILABLE

            await eventually(lambda: probe(OLD), lambda code: code == grpc.StatusCode.OK, within=30)
            write_principals(path, [NEW])
            process.send_signal(signal.SIGHUP)
            await eventually(lambda: probe(NEW), lambda code: code == grpc.StatusCode.OK)
            assert await probe(OLD) == grpc.StatusCode.UNAUTHENTICATED

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        stderr = log_path.read_text()
        assert "principals file reloaded" in stderr
        assert OLD.token not in stderr
        assert NEW.token not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("stdin", "code"),
    [(f"{OLD.token}\n", 0), ("short-token\n", 2), ("has spaces in it but is quite long enough to pass\n", 2)],
    ids=["good", "too-short", "bad-characters"],
)
async def test_hash_token_command(stdin: str, code: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cofounder_server",
        "hash-token",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode()), 30)

    assert process.returncode == code
    if code == 0:
        assert stdout.decode() == hashlib.sha256(OLD.token.encode()).hexdigest() + "\n"
    else:
        assert stdout == b""
        assert stdin.strip().encode() not in stderr
