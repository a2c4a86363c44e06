"""The published client and CLI against the real server."""

from __future__ import annotations

import json

import pytest

from cofounder.agent.v1 import job_pb2
from cofounder_client import Client, InvalidArgumentError, NotFoundError
from cofounder_client.cli import main as cli_main


@pytest.fixture
async def client(app):
    async with Client(f"127.0.0.1:{app.port}", timeout=10) as c:
        yield c


async def test_client_round_trip(client, project_id) -> None:
    job = await client.submit_job(
        project_id=project_id,
        goal="Write the docs",
        daily_budget_microdollars=2_000_000,
        agent={"brain": "scripted", "config": {"turns": [{"text": "done"}]}},
        request_id="client-e2e-1",
    )
    again = await client.submit_job(
        project_id=project_id,
        goal="Write the docs",
        daily_budget_microdollars=2_000_000,
        agent={"brain": "scripted", "config": {"turns": [{"text": "done"}]}},
        request_id="client-e2e-1",
    )
    assert again.job_id == job.job_id

    assert (await client.get_job(job.job_id)).goal == "Write the docs"
    status = await client.get_job_status(job.job_id)
    assert status.job_status == job_pb2.JOB_STATUS_QUEUED
    listed = [j.job_id async for j in client.iter_jobs(project_id=project_id, page_size=1)]
    assert listed == [job.job_id]

    cancelled = await client.cancel_job(job.job_id, reason="done testing")
    assert cancelled.status == job_pb2.JOB_STATUS_CANCELLED


async def test_client_errors_carry_codes_and_field_violations(client, project_id) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.submit_job(project_id=project_id, goal="", daily_budget_microdollars=-1)
    fields = {field for field, _ in caught.value.field_violations}
    assert {"goal", "daily_budget_microdollars", "agent"} <= fields

    with pytest.raises(NotFoundError) as missing:
        await client.get_job("00000000-0000-4000-8000-00000000abcd")
    assert missing.value.reason == "JOB_NOT_FOUND"

    with pytest.raises(NotFoundError):
        await client.wake_agent("00000000-0000-4000-8000-00000000abcd")


async def test_cli_submits_and_reads_jobs(app, project_id, capsys) -> None:
    target = ["--target", f"127.0.0.1:{app.port}"]
    code = await _run_cli(
        [
            *target,
            "submit",
            "--project",
            project_id,
            "--goal",
            "From the CLI",
            "--budget-usd",
            "1.5",
            "--brain",
            "scripted",
            "--config-json",
            '{"turns": [{"text": "done"}]}',
        ]
    )
    assert code == 0
    job = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert job["daily_budget_microdollars"] == "1500000"

    assert await _run_cli([*target, "status", job["job_id"]]) == 0
    status = json.loads(capsys.readouterr().out.strip())
    assert status["job_status"] == "JOB_STATUS_QUEUED"

    assert await _run_cli([*target, "get", "not-a-uuid"]) == 10 + 3
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


async def _run_cli(argv: list[str]) -> int:
    import asyncio

    # The CLI runs its own event loop; keep it off the session loop the server lives on.
    return await asyncio.to_thread(cli_main, argv)
