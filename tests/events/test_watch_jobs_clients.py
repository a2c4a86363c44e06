"""WatchJobs through the Python client and the CLI, against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from cofounder_client import Client, FleetSnapshot
from cofounder_client.cli import main
from cofounder_server.app import Application
from tests.events.conftest import start_replica
from tests.integration.test_jobs import submit
from tests.support import RPC_TIMEOUT


async def test_follow_jobs_resumes_on_its_own_across_a_server_restart(
    app: Application, jobs_stub, settings_for, clock, project_id
) -> None:
    replica = await start_replica(app, settings_for, clock)
    port = replica.port
    first = await submit(jobs_stub, project_id)
    updates: asyncio.Queue[FleetSnapshot | pb.JobChange] = asyncio.Queue()

    async def follow(client: Client) -> None:
        view = client.follow_jobs(project_id=project_id, initial_backoff=0.05)
        async with contextlib.aclosing(view):
            async for update in view:
                updates.put_nowait(update)

    async with Client(f"127.0.0.1:{port}") as client:
        follower = asyncio.create_task(follow(client))
        try:
            snapshot = await asyncio.wait_for(updates.get(), RPC_TIMEOUT)
            assert isinstance(snapshot, FleetSnapshot)
            assert [status.job_id for status in snapshot.statuses] == [first.job_id]

            # The replica goes away; changes go on meanwhile; a new server takes its address.
            await replica.stop(grace_seconds=1.0)
            second = await submit(jobs_stub, project_id)
            await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id), timeout=RPC_TIMEOUT)
            replica = await start_replica(app, settings_for, clock, listen=f"127.0.0.1:{port}")

            changes = [await asyncio.wait_for(updates.get(), RPC_TIMEOUT) for _ in range(2)]
            assert all(isinstance(change, pb.JobChange) for change in changes)
            assert [(c.status.job_id, c.status.job_status) for c in changes] == [  # type: ignore[union-attr]
                (second.job_id, job_pb2.JOB_STATUS_QUEUED),
                (first.job_id, job_pb2.JOB_STATUS_CANCELLED),
            ]
            assert updates.empty()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await replica.stop(grace_seconds=1.0)


async def test_cli_jobs_prints_each_status_once(
    app: Application, jobs_stub, project_id, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    for name in ("COFOUNDER_TARGET", "COFOUNDER_TOKEN", "COFOUNDER_ON_BEHALF_OF"):
        monkeypatch.delenv(name, raising=False)
    job = await submit(jobs_stub, project_id)

    argv = ["--target", f"127.0.0.1:{app.port}", "jobs", "--project", project_id]
    code = await asyncio.wait_for(asyncio.to_thread(main, argv), RPC_TIMEOUT)

    assert code == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["job_id"] == job.job_id


async def test_cli_jobs_watch_prints_json_lines_when_piped(app: Application, jobs_stub, project_id) -> None:
    job = await submit(jobs_stub, project_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from cofounder_client.cli import main; sys.exit(main())",
        "--target",
        f"127.0.0.1:{app.port}",
        "jobs",
        "--watch",
        "--project",
        project_id,
        stdout=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert process.stdout is not None

        async def line() -> dict[str, Any]:
            return json.loads(await asyncio.wait_for(process.stdout.readline(), RPC_TIMEOUT))  # type: ignore[union-attr]

        snapshot = await line()
        assert [status["job_id"] for status in snapshot["statuses"]] == [job.job_id]
        assert snapshot["last"] is True
        await jobs_stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
        change = await line()
        assert change["kind"] == "JOB_CHANGE_KIND_UPDATED"
        assert change["status"]["job_status"] == "JOB_STATUS_CANCELLED"
        assert int(change["sequence"]) > int(snapshot["latest_sequence"])
    finally:
        process.kill()
        await process.wait()
