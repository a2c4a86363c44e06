"""An approved tool call runs at most once, across kill -9 and replicas: real server
processes, the ``counter`` plug-in counting its executions in files every process shares.

* killed while waiting, approved through another process, restarted: the call runs once;
* killed while the call runs: it is not run again, and the agent is told it was interrupted;
* (PostgreSQL + Redis only) 20 jobs on two executor processes, each approval resolved
  through both at once: every call runs exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import escalation_pb2, job_pb2
from tests.executor_plugins.counting_tool import DIRECTORY_VARIABLE, executions
from tests.support import EXTERNAL_DATABASE, EXTERNAL_REDIS, eventually, free_port

from .conftest import stub_for
from .support import events_of, finished, submit, turn, types_of
from .test_durability import _ready, _spawn
from .test_escalations import escalations_stub, pending_of, tool_messages
from .test_tool_approvals import count, decide, of_type, policy

PLUGIN = ("--plugins", "tests.executor_plugins.counting_tool:register")


@pytest.fixture(autouse=True)
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where every server process's ``counter`` counts (spawned servers inherit it)."""
    where = tmp_path / "counts"
    where.mkdir()
    monkeypatch.setenv(DIRECTORY_VARIABLE, str(where))
    return where


class Servers:
    """Server processes of one test, each killed at the end if still running."""

    def __init__(self, tmp_path: Path, redis_url: str, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.database_url = database_url
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, name: str, port: int, *extra: str) -> asyncio.subprocess.Process:
        process = await _spawn(self.tmp_path / name, port, self.redis_url, self.database_url, *PLUGIN, *extra)
        self.processes.append(process)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await eventually(lambda: _ready(stub_for(channel)), bool, within=60)
        return process

    async def kill_9(self, process: asyncio.subprocess.Process) -> None:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
async def servers(tmp_path: Path, fresh_database_url: str, shared_redis_url: str) -> AsyncIterator[Servers]:
    database_url = fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    started = Servers(tmp_path, shared_redis_url, database_url)
    try:
        yield started
    finally:
        await started.close()


async def test_killed_while_waiting_then_approved_elsewhere_the_call_runs_once_on_restart(
    servers: Servers, project_id: str
) -> None:
    runner, api = free_port(), free_port()
    process = await servers.start("runner", runner)
    await servers.start("api", api, "--executor-enabled", "false")
    config = {"turns": [turn("counting", [count("a")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner}") as channel:
        job = await submit(stub_for(channel), project_id, config, tool_approval=policy())
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)
    await servers.kill_9(process)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{api}") as channel:
        response = await decide(
            escalations_stub(channel),
            raised.escalation_id,
            "approve",
            arguments_digest=raised.tool_call.arguments_digest,
        )
        assert response.escalation.status == escalation_pb2.ESCALATION_STATUS_RESOLVED
    assert executions("a") == []  # approved, not run: its runner is dead

    await servers.start("runner", runner)  # same data dir: the same runner takes its job back
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner}") as channel:
        stub = stub_for(channel)
        assert (await finished(stub, job.job_id, within=60)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
    assert executions("a") == [{"key": "a"}]
    assert types_of(events).count("agent.tool.called") == 1
    assert types_of(events).count("agent.thinking") == 2  # no earlier step was done again
    assert types_of(events).count("agent.tool.approved") == 1
    told = (await tool_messages(SimpleNamespace(database_url=servers.database_url), job.job_id))["count-a"]
    assert told.endswith("counted a +1")


async def test_killed_during_the_call_it_is_not_run_again_and_the_agent_is_told(
    servers: Servers, counts: Path, project_id: str
) -> None:
    port = free_port()
    process = await servers.start("runner", port)
    config = {"turns": [turn("counting", [count("h", hold=True)]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        job = await submit(stub_for(channel), project_id, config, tool_approval=policy())
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)
        await decide(
            escalations_stub(channel),
            raised.escalation_id,
            "approve",
            arguments_digest=raised.tool_call.arguments_digest,
        )
        await eventually(lambda: _exists(counts / "h.started"), bool, within=60)
    await servers.kill_9(process)  # mid-call
    (counts / "h.release").touch()  # a rerun would finish at once: it must not happen

    await servers.start("runner", port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stub_for(channel)
        assert (await finished(stub, job.job_id, within=60)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
    assert executions("h") == [{"hold": True, "key": "h"}]
    (called,) = [e.agent_tool_called for e in of_type(events, "agent.tool.called")]
    assert called.is_error
    assert "interrupted and may or may not have completed" in called.result
    told = (await tool_messages(SimpleNamespace(database_url=servers.database_url), job.job_id))["count-h"]
    assert "interrupted and may or may not have completed" in told


@pytest.mark.external
@pytest.mark.skipif(
    not (EXTERNAL_DATABASE and EXTERNAL_REDIS),
    reason="needs COFOUNDER_TEST_DATABASE_URL and COFOUNDER_TEST_REDIS_URL",
)
async def test_twenty_approvals_through_two_processes_each_run_once(
    servers: Servers, project_id: str
) -> None:
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        await servers.start(f"replica-{index}", port)
    config = [{"turns": [turn("counting", [count(f"k{n}")]), turn("done")]} for n in range(20)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    try:
        stubs = [stub_for(channel) for channel in channels]
        escalations = [escalations_stub(channel) for channel in channels]
        jobs = [await submit(stubs[n % 2], project_id, config[n], tool_approval=policy()) for n in range(20)]
        raised = [(await pending_of(escalations[0], job.job_id))[0] for job in jobs]

        async def attempt(escalation: Any, which: int) -> str:
            try:
                await decide(
                    escalations[which],
                    escalation.escalation_id,
                    "approve",
                    arguments_digest=escalation.tool_call.arguments_digest,
                    request_id=f"{escalation.escalation_id}-{which}",
                )
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return "won"

        results = await asyncio.gather(*(attempt(e, which) for e in raised for which in (0, 1)))
        assert results.count("won") == 20
        assert set(results) == {"won", "FAILED_PRECONDITION"}
        for job in jobs:
            done = await finished(stubs[0], job.job_id, within=60)
            assert done.status == job_pb2.JOB_STATUS_READY
        assert [len(executions(f"k{n}")) for n in range(20)] == [1] * 20
        for job in jobs:
            events = await events_of(stubs[1], job.job_id)
            assert types_of(events).count("agent.tool.called") == 1
    finally:
        for channel in channels:
            await channel.close()


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)
