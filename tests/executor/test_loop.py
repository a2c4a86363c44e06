"""The loop: think, record, act, observe; its outcomes, guards and events, on a real server."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import job_pb2
from tests.support import RPC_TIMEOUT, eventually

from .support import (
    Gate,
    checkpoint_messages,
    events_of,
    finished,
    get_job,
    ledger,
    narrate,
    submit,
    turn,
    types_of,
    varied_loop,
)


async def test_a_scripted_job_runs_to_completion_and_is_observable(server, stub, project_id) -> None:
    config = {
        "turns": [
            turn("Planning.", [narrate("Planning the page", phase="planning")]),
            turn("Building.", [narrate("Writing HTML", phase="building")]),
            turn("Done."),
        ]
    }
    job = await submit(stub, project_id, config)

    done = await finished(stub, job.job_id)

    assert done.status == job_pb2.JOB_STATUS_READY
    assert done.outcome == job_pb2.JOB_OUTCOME_COMPLETED
    events = await events_of(stub, job.job_id)
    assert types_of(events) == [
        "job.status_changed",  # queued
        "job.status_changed",  # running
        "agent.thinking",
        "agent.budget_updated",
        "gsd.phase.started",
        "agent.tool.called",
        "agent.thinking",
        "agent.budget_updated",
        "gsd.phase.completed",
        "gsd.phase.started",
        "agent.tool.called",
        "agent.thinking",
        "agent.budget_updated",
        "gsd.phase.completed",
        "job.status_changed",  # ready
    ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[1].job_status_changed.status == job_pb2.JOB_STATUS_RUNNING
    assert events[2].agent_thinking.text == "Planning."
    assert events[4].phase_started.phase == "planning"
    assert json.loads(events[5].agent_tool_called.input_json)["text"] == "Planning the page"
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_READY
    # 1000 input tokens at $3/M + 100 output at $15/M = 3,000 + 1,500 microdollars per call.
    assert await ledger(server, job.job_id) == [(1, 4500), (2, 4500), (3, 4500)]
    assert events[-3].agent_budget_updated.spent_today_microdollars == 13_500
    status = (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).status
    assert status.job_status == job_pb2.JOB_STATUS_READY
    assert status.agent_state == job_pb2.AGENT_STATE_COMPLETED
    assert status.spent_today_microdollars == 13_500
    # goal, then per iteration the assistant turn and its tool results: appended, never rewritten.
    assert await checkpoint_messages(server, job.job_id) == 1 + 2 + 2 + 1


async def test_tool_calls_are_capped(start_server, project_id) -> None:
    server = await start_server(max_tool_calls=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from .conftest import stub_for

        stub = stub_for(channel)
        job = await submit(stub, project_id, varied_loop())
        done = await finished(stub, job.job_id)
    assert done.status == job_pb2.JOB_STATUS_FAILED
    assert done.outcome == job_pb2.JOB_OUTCOME_ITERATION_LIMIT
    assert "5 tool calls" in done.outcome_detail
    assert len(await ledger(server, job.job_id)) == 5


async def test_repetition_is_steered_once_then_stops_the_job(stub, project_id) -> None:
    same = turn("again", [narrate("same thing")])
    job = await submit(stub, project_id, {"turns": [same], "loop": True})

    done = await finished(stub, job.job_id)

    assert done.status == job_pb2.JOB_STATUS_FAILED
    assert done.outcome == job_pb2.JOB_OUTCOME_REPETITION
    calls = [e.agent_tool_called for e in await events_of(stub, job.job_id) if e.type == "agent.tool.called"]
    # Two calls run; the third is refused with steering; the fourth ends the job.
    assert [c.is_error for c in calls] == [False, False, True]
    assert "same input 3 times" in calls[2].result


async def test_long_tool_results_are_cut_in_the_middle_and_tool_failures_are_results(
    server, stub, project_id
) -> None:
    config = {
        "turns": [
            turn("", [{"name": "echo", "input": {"text": "abcdefghij", "repeat": 5000}}]),
            turn("", [{"name": "broken", "input": {}}, {"name": "missing", "input": {}}]),
            turn("done"),
        ]
    }
    job = await submit(stub, project_id, config)
    done = await finished(stub, job.job_id)
    assert done.status == job_pb2.JOB_STATUS_READY
    calls = [e.agent_tool_called for e in await events_of(stub, job.job_id) if e.type == "agent.tool.called"]
    assert len(calls[0].result) == server.settings.tool_result_limit_chars
    assert calls[0].result.startswith("abcdefghij")
    assert calls[0].result.endswith("abcdefghij")
    assert "characters cut" in calls[0].result
    assert calls[1].is_error
    assert "tool bug" in calls[1].result
    assert calls[2].is_error
    assert "no tool called 'missing'" in calls[2].result


async def test_brain_errors_are_retried_then_fail_the_job(stub, project_id) -> None:
    flaky = {"error": {"message": "overloaded", "retryable": True, "signature": "s:overloaded"}, "times": 2}
    fatal = {"error": {"message": "bad key", "retryable": False, "signature": "s:auth"}}
    recovered = await submit(stub, project_id, {"turns": [flaky, turn("fine")]})
    failed = await submit(stub, project_id, {"turns": [fatal, turn("never")]})

    assert (await finished(stub, recovered.job_id)).status == job_pb2.JOB_STATUS_READY
    retries = [
        e.agent_retrying for e in await events_of(stub, recovered.job_id) if e.type == "agent.retrying"
    ]
    assert [(r.attempt, r.max_attempts, r.error_signature) for r in retries] == [
        (1, 3, "s:overloaded"),
        (2, 3, "s:overloaded"),
    ]

    done = await finished(stub, failed.job_id)
    assert done.status == job_pb2.JOB_STATUS_FAILED
    assert done.outcome == job_pb2.JOB_OUTCOME_MODEL_ERROR
    assert "bad key" in done.outcome_detail


async def test_a_job_with_an_unknown_brain_is_refused_at_submit(stub, project_id) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(stub, project_id, {}, brain="no-such-brain")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown brain" in (caught.value.details() or "")


async def test_cancel_stops_a_running_agent_within_an_iteration(server, stub, gate: Gate, project_id) -> None:
    job = await submit(stub, project_id, varied_loop(), brain="gated")
    gate.allow(3)
    await eventually(lambda: ledger(server, job.job_id), lambda rows: len(rows) == 3)
    await eventually(lambda: _value(gate.waiting), lambda waiting: waiting == 1)

    cancelled = (
        await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id, reason="enough"), timeout=RPC_TIMEOUT)
    ).job
    again = (await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).job
    gate.allow(5)  # the brain answers the turn it was asked for; nothing of it is recorded as done

    assert cancelled.status == again.status == job_pb2.JOB_STATUS_CANCELLED
    assert again.outcome_detail == "enough"
    await eventually(lambda: _value(server.executor.runs), lambda runs: job.job_id not in runs)
    assert gate.thinks == 4
    events = await events_of(stub, job.job_id)
    assert events[-1].type == "job.status_changed"
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_CANCELLED
    assert events[-1].job_status_changed.previous_status == job_pb2.JOB_STATUS_RUNNING
    assert (await get_job(stub, job.job_id)).outcome == job_pb2.JOB_OUTCOME_CANCELLED
    # The 4th call was paid for: it is in the ledger, but no event follows the terminal one.
    assert [i for i, _ in await ledger(server, job.job_id)] == [1, 2, 3, 4]


async def test_running_jobs_are_capped_and_the_rest_wait_in_order(
    start_server, gate: Gate, manual_clock, project_id
) -> None:
    server = await start_server(max_running_jobs=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from .conftest import stub_for

        stub = stub_for(channel)
        jobs = []
        for _ in range(4):
            jobs.append(await submit(stub, project_id, {"turns": [turn("done")]}, brain="gated"))
            await manual_clock.advance(timedelta(seconds=1))  # the queue's order is submission time
        await eventually(lambda: _value(gate.waiting), lambda waiting: waiting == 2)
        statuses = [(await get_job(stub, j.job_id)).status for j in jobs]
        assert statuses == [job_pb2.JOB_STATUS_RUNNING] * 2 + [job_pb2.JOB_STATUS_QUEUED] * 2

        gate.allow(1)
        await eventually(
            lambda: get_job(stub, jobs[2].job_id), lambda j: j.status == job_pb2.JOB_STATUS_RUNNING
        )
        assert (await get_job(stub, jobs[3].job_id)).status == job_pb2.JOB_STATUS_QUEUED
        gate.allow(3)
        for j in jobs:
            assert (await finished(stub, j.job_id)).status == job_pb2.JOB_STATUS_READY


async def _value(value: object) -> object:
    return value


@pytest.fixture
def project_id() -> str:
    import uuid

    return f"proj-{uuid.uuid4().hex[:12]}"
