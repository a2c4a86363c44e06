"""Tool approvals end to end: a call of a tool the job's policy lists does not run until a
person approves that exact call (by its digest); a rejection never runs it; an edit runs the
edited call and the agent is told; a tool approved for the job runs at once afterwards; a
deadline decides as the policy says. The ``counter`` tool counts its executions in files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.store.database import open_database
from cofounder_server.store.models import ToolExecutionRow
from cofounder_server.store.tool_executions import ToolExecutionRepository
from tests.executor_plugins.counting_tool import DIRECTORY_VARIABLE, executions
from tests.support import RPC_TIMEOUT, eventually

from .conftest import START as START_TIME
from .support import agent_state, events_of, finished, get_job, status_of, submit, turn, types_of
from .test_escalations import error_info, escalations_stub, pending_of, tool_messages

START = ["job.status_changed", "job.status_changed"]
STEP = ["agent.thinking", "agent.budget_updated"]
REQUESTED = ["agent.escalation_raised", "agent.tool.approval_requested", "agent.waiting_for_input"]


@pytest.fixture(autouse=True)
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the ``counter`` tool counts its executions."""
    where = tmp_path / "counts"
    where.mkdir()
    monkeypatch.setenv(DIRECTORY_VARIABLE, str(where))
    return where


@pytest.fixture
async def escalations(server: Application) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield escalations_stub(channel)


def count(key: str, call_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A scripted call of the ``counter`` tool."""
    return {"name": "counter", "call_id": call_id or f"count-{key}", "input": {"key": key, **extra}}


def policy(*tools: str, **extra: Any) -> job_pb2.ToolApprovalPolicy:
    return job_pb2.ToolApprovalPolicy(tools=list(tools) or ["count*"], **extra)


def digest(arguments: dict[str, Any]) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def decide(escalations: Any, escalation_id: str, decision: str, **extra: Any) -> Any:
    return await escalations.ResolveEscalation(
        escalation_service_pb2.ResolveEscalationRequest(
            escalation_id=escalation_id, decision=decision, **extra
        ),
        timeout=RPC_TIMEOUT,
    )


async def get_escalation(escalations: Any, escalation_id: str) -> escalation_pb2.Escalation:
    response = await escalations.GetEscalation(
        escalation_service_pb2.GetEscalationRequest(escalation_id=escalation_id), timeout=RPC_TIMEOUT
    )
    return response.escalation


def of_type(events: list[Any], name: str) -> list[Any]:
    return [event for event in events if event.type == name]


async def test_an_approved_call_runs_once_after_approval_with_its_events(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("counting", [count("a", amount=2)]), turn("done")]}
    job = await submit(stub, project_id, config, tool_approval=policy())
    (raised,) = await pending_of(escalations, job.job_id)
    assert raised.trigger == escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL
    assert (raised.tool_name, raised.tool_call_id) == ("counter", "count-a")
    assert json.loads(raised.tool_call.arguments_json) == {"key": "a", "amount": 2}
    assert raised.tool_call.arguments_digest == digest({"key": "a", "amount": 2})
    assert json.loads(raised.tool_call.input_schema_json)["required"] == ["key"]
    assert [o.value for o in raised.options] == ["approve", "approve_for_job", "reject"]
    status = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
    assert list(status.pending_escalation_ids) == [raised.escalation_id]
    assert executions("a") == []  # asked, not run
    watch = escalations.WatchEscalations(
        escalation_service_pb2.WatchEscalationsRequest(job_id=job.job_id, after_sequence=0),
        timeout=RPC_TIMEOUT,
    )
    first = await watch.read()
    (watched,) = first.snapshot.pending
    assert watched.tool_call.arguments_digest == raised.tool_call.arguments_digest
    events_batch = await watch.read()
    assert (
        events_batch.events.events[0].escalation.tool_call.arguments_json == raised.tool_call.arguments_json
    )
    watch.cancel()

    response = await decide(
        escalations, raised.escalation_id, "approve", arguments_digest=raised.tool_call.arguments_digest
    )
    assert response.agent_waiting
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert executions("a") == [{"key": "a", "amount": 2}]
    events = await events_of(stub, job.job_id)
    assert types_of(events) == [
        *START,
        *STEP,
        *REQUESTED,
        "agent.tool.approved",
        "agent.escalation_resolved",
        "agent.tool.called",
        *STEP,
        "job.status_changed",
    ]
    requested = of_type(events, "agent.tool.approval_requested")[0].agent_tool_approval_requested
    assert requested.arguments_digest == raised.tool_call.arguments_digest
    approved = of_type(events, "agent.tool.approved")[0].agent_tool_approved
    assert (approved.edited, approved.for_job, approved.approved_by) == (False, False, "local")
    called = of_type(events, "agent.tool.called")[0].agent_tool_called
    assert json.loads(called.input_json) == {"key": "a", "amount": 2}
    told = (await tool_messages(server, job.job_id))["count-a"]
    assert told.startswith("Approved by local: this call of counter ran as you asked.")
    assert told.endswith("counted a +2")


async def test_a_rejected_call_never_runs_and_the_agent_gets_the_message(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("counting", [count("a")]), turn("done")]}
    job = await submit(stub, project_id, config, tool_approval=policy("counter"))
    (raised,) = await pending_of(escalations, job.job_id)
    # Rejecting needs no digest.
    await decide(escalations, raised.escalation_id, "reject", guidance="not on a Friday")
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert executions("a") == []
    events = await events_of(stub, job.job_id)
    assert types_of(events) == [
        *START,
        *STEP,
        *REQUESTED,
        "agent.tool.rejected",
        "agent.escalation_resolved",
        *STEP,
        "job.status_changed",
    ]
    rejected = of_type(events, "agent.tool.rejected")[0].agent_tool_rejected
    assert rejected.rejected_by == "local"
    assert "not on a Friday" in rejected.message
    told = (await tool_messages(server, job.job_id))["count-a"]
    assert told == (
        "Rejected by local: this call of counter did not run.\nReviewer's message: not on a Friday"
    )


async def test_edited_arguments_run_as_edited_and_the_agent_is_told_what_changed(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("counting", [count("a", amount=1)]), turn("done")]}
    job = await submit(stub, project_id, config, tool_approval=policy())
    (raised,) = await pending_of(escalations, job.job_id)
    sent = raised.tool_call.arguments_digest

    for edited, path in (
        ('{"key": "a", "amount": "five"}', "$.amount"),
        ('{"key": "a", "amount": 0}', "$.amount"),
        ('{"amount": 3}', "$"),
        ('{"key": "a", "colour": "red"}', "$"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(
                escalations,
                raised.escalation_id,
                "approve",
                arguments_digest=sent,
                edited_arguments_json=edited,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, bad = error_info(caught.value)
        assert bad is not None
        (violation,) = bad.field_violations
        assert violation.field == "edited_arguments_json"
        assert f"at {path}" in violation.description, violation.description
    for not_an_object in ("[1]", "{oops"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(
                escalations,
                raised.escalation_id,
                "approve",
                arguments_digest=sent,
                edited_arguments_json=not_an_object,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # an edit is for approvals only
        await decide(escalations, raised.escalation_id, "reject", edited_arguments_json='{"key": "b"}')
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing was recorded by the refused resolves.
    still = await get_escalation(escalations, raised.escalation_id)
    assert still.status == escalation_pb2.ESCALATION_STATUS_PENDING
    assert still.tool_call.approved_arguments_json == ""

    await decide(
        escalations,
        raised.escalation_id,
        "approve",
        arguments_digest=sent,
        edited_arguments_json='{"amount": 5, "key": "a"}',
        guidance="five at once",
    )
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert executions("a") == [{"key": "a", "amount": 5}]
    decided = await get_escalation(escalations, raised.escalation_id)
    assert decided.tool_call.approved_arguments_json == '{"amount":5,"key":"a"}'
    assert decided.tool_call.edits == "$.amount: 1 -> 5"
    events = await events_of(stub, job.job_id)
    approved = of_type(events, "agent.tool.approved")[0].agent_tool_approved
    assert approved.edited
    assert json.loads(approved.arguments_json) == {"key": "a", "amount": 5}
    called = of_type(events, "agent.tool.called")[0].agent_tool_called
    assert json.loads(called.input_json) == {"key": "a", "amount": 5}
    told = (await tool_messages(server, job.job_id))["count-a"]
    assert "with EDITED arguments, not yours" in told
    assert "- $.amount: 1 -> 5" in told
    assert "Reviewer's message: five at once" in told
    assert told.endswith("counted a +5")


async def test_a_tool_approved_for_the_job_runs_at_once_afterwards(
    server: Application, stub, escalations, project_id
) -> None:
    config = {
        "turns": [
            turn("first", [count("a")]),
            turn("second", [count("b"), {"name": "echo", "call_id": "e", "input": {"text": "hi"}}]),
            turn("done"),
        ]
    }
    job = await submit(stub, project_id, config, tool_approval=policy("counter", "echo"))
    (raised,) = await pending_of(escalations, job.job_id)
    await decide(
        escalations,
        raised.escalation_id,
        "approve_for_job",
        arguments_digest=raised.tool_call.arguments_digest,
    )
    assert list((await get_job(stub, job.job_id)).approved_tools) == ["counter"]
    # echo still needs its own approval; counter no longer does.
    (echo,) = await pending_of(escalations, job.job_id)
    assert echo.tool_name == "echo"
    assert [len(executions(k)) for k in "ab"] == [1, 1]
    await decide(escalations, echo.escalation_id, "reject")
    done = await finished(stub, job.job_id)
    assert done.status == job_pb2.JOB_STATUS_READY
    assert list(done.approved_tools) == ["counter"]
    events = await events_of(stub, job.job_id)
    assert of_type(events, "agent.tool.approved")[0].agent_tool_approved.for_job
    assert len(of_type(events, "agent.tool.approval_requested")) == 2
    told = (await tool_messages(server, job.job_id))["count-a"]
    assert "counter is approved for the rest of the job" in told


async def test_an_approval_names_the_digest_of_the_call_it_approves(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("counting", [count("a")]), turn("done")]}
    job = await submit(stub, project_id, config, tool_approval=policy())
    (raised,) = await pending_of(escalations, job.job_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decide(escalations, raised.escalation_id, "approve", arguments_digest=digest({"key": "b"}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_info(caught.value)
    assert info is not None
    assert info.reason == "TOOL_CALL_DIGEST_MISMATCH"
    assert info.metadata["arguments_digest"] == raised.tool_call.arguments_digest
    for missing_or_bad, field in (("", "arguments_digest"), ("ABC", "arguments_digest")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await decide(escalations, raised.escalation_id, "approve", arguments_digest=missing_or_bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, bad = error_info(caught.value)
        assert bad is not None
        assert [v.field for v in bad.field_violations] == [field]
    assert (await get_escalation(escalations, raised.escalation_id)).status == (
        escalation_pb2.ESCALATION_STATUS_PENDING
    )
    assert executions("a") == []

    await decide(
        escalations, raised.escalation_id, "approve", arguments_digest=raised.tool_call.arguments_digest
    )
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert len(executions("a")) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # decided: too late, whatever the digest
        await decide(
            escalations, raised.escalation_id, "approve", arguments_digest=raised.tool_call.arguments_digest
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_info(caught.value)
    assert info is not None
    assert info.reason == "ESCALATION_ALREADY_RESOLVED"


@pytest.mark.parametrize("on_timeout", ["reject", "approve"])
async def test_a_deadline_rejects_saying_nobody_answered_or_approves_when_the_policy_says(
    server: Application, stub, escalations, project_id, *, manual_clock: ManualClock, on_timeout: str
) -> None:
    timeout = {
        "reject": job_pb2.TOOL_APPROVAL_TIMEOUT_UNSPECIFIED,
        "approve": job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE,
    }[on_timeout]
    config = {"turns": [turn("counting", [count("a")]), turn("done")]}
    job = await submit(
        stub, project_id, config, tool_approval=policy(deadline_seconds=300, on_timeout=timeout)
    )
    (raised,) = await pending_of(escalations, job.job_id)
    assert raised.deadline.ToDatetime(tzinfo=START_TIME.tzinfo) == manual_clock.now() + timedelta(seconds=300)
    assert raised.default_option == on_timeout
    await manual_clock.advance(timedelta(seconds=299))
    await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
    await manual_clock.advance(timedelta(seconds=1))
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    decided = await get_escalation(escalations, raised.escalation_id)
    assert decided.decision_source == escalation_pb2.DECISION_SOURCE_DEADLINE
    assert decided.resolved_by == ""
    told = (await tool_messages(server, job.job_id))["count-a"]
    events = await events_of(stub, job.job_id)
    if on_timeout == "reject":
        assert executions("a") == []
        assert told.startswith("Nobody answered the request to approve this call of counter by its deadline")
        rejected = of_type(events, "agent.tool.rejected")[0].agent_tool_rejected
        assert rejected.decision_source == escalation_pb2.DECISION_SOURCE_DEADLINE
    else:
        assert len(executions("a")) == 1
        assert told.startswith("Nobody answered by the deadline; the policy approves on timeout")
        assert of_type(events, "agent.tool.approved")[0].agent_tool_approved.approved_by == ""
    assert "Approved by" not in told
    assert "Rejected by" not in told


async def test_two_approvals_of_one_turn_each_wait_and_other_calls_run_at_once(
    server: Application, stub, escalations, project_id
) -> None:
    config = {
        "turns": [
            turn(
                "three calls",
                [count("a"), {"name": "echo", "call_id": "e", "input": {"text": "now"}}, count("b")],
            ),
            turn("done"),
        ]
    }
    job = await submit(stub, project_id, config, tool_approval=policy())
    first, second = sorted(await pending_of(escalations, job.job_id, count=2), key=lambda e: e.tool_call_id)
    assert (first.tool_call_id, second.tool_call_id) == ("count-a", "count-b")
    assert first.escalation_id != second.escalation_id
    # The unlisted call ran at once, in the turn.
    events = await events_of(stub, job.job_id)
    assert [e.agent_tool_called.tool_name for e in of_type(events, "agent.tool.called")] == ["echo"]

    await decide(
        escalations, second.escalation_id, "approve", arguments_digest=second.tool_call.arguments_digest
    )
    status = await status_of(stub, job.job_id)
    assert status.agent_state == job_pb2.AGENT_STATE_WAITING_FOR_INPUT
    assert list(status.pending_escalation_ids) == [first.escalation_id]
    assert executions("b") == []  # the turn's results go back together, once all are settled

    await decide(escalations, first.escalation_id, "reject", guidance="only b")
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert (len(executions("a")), len(executions("b"))) == (0, 1)
    told = await tool_messages(server, job.job_id)
    assert set(told) == {"count-a", "e", "count-b"}
    assert told["count-a"].startswith("Rejected by")
    assert told["count-b"].endswith("counted b +1")
    thinking = of_type(await events_of(stub, job.job_id), "agent.thinking")
    assert len(thinking) == 2  # one model call after both were settled


async def test_approvals_do_not_count_against_the_escalation_cap(start_server, project_id) -> None:
    app = await start_server(max_escalations_per_job=1)
    config = {"turns": [turn(f"call {n}", [count(f"k{n}")]) for n in range(3)] + [turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        from .conftest import stub_for

        stub, escalations = stub_for(channel), escalations_stub(channel)
        job = await submit(stub, project_id, config, tool_approval=policy())
        for _ in range(3):
            (raised,) = await pending_of(escalations, job.job_id)
            await decide(
                escalations,
                raised.escalation_id,
                "approve",
                arguments_digest=raised.tool_call.arguments_digest,
            )
            await pending_of(escalations, job.job_id, count=0)
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        assert [len(executions(f"k{n}")) for n in range(3)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("approval", "field"),
    [
        (job_pb2.ToolApprovalPolicy(), "agent.tool_approval.tools"),
        (job_pb2.ToolApprovalPolicy(tools=["deploy", "rm -rf"]), "agent.tool_approval.tools[1]"),
        (job_pb2.ToolApprovalPolicy(tools=["x" * 129]), "agent.tool_approval.tools[0]"),
        (
            job_pb2.ToolApprovalPolicy(tools=["d"], deadline_seconds=-1),
            "agent.tool_approval.deadline_seconds",
        ),
        (
            job_pb2.ToolApprovalPolicy(tools=["d"], deadline_seconds=30 * 86_400 + 1),
            "agent.tool_approval.deadline_seconds",
        ),
        (
            job_pb2.ToolApprovalPolicy(tools=["d"], on_timeout=job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE),
            "agent.tool_approval.on_timeout",
        ),
        (job_pb2.ToolApprovalPolicy(tools=["d"], on_timeout=9), "agent.tool_approval.on_timeout"),  # type: ignore[arg-type]
    ],
)
async def test_a_bad_policy_is_invalid_argument_naming_the_field(
    server: Application, stub, project_id, *, approval: job_pb2.ToolApprovalPolicy, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(stub, project_id, {"turns": [turn("done")]}, tool_approval=approval)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_info(caught.value)
    assert bad is not None
    assert [v.field for v in bad.field_violations] == [field]


async def test_the_policy_is_kept_with_the_job(server: Application, stub, project_id) -> None:
    approval = policy(
        "deploy_*", "counter", deadline_seconds=60, on_timeout=job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE
    )
    job = await submit(stub, project_id, {"turns": [turn("done")]}, tool_approval=approval)
    stored = (await get_job(stub, job.job_id)).agent.tool_approval
    assert (list(stored.tools), stored.deadline_seconds, stored.on_timeout) == (
        ["deploy_*", "counter"],
        60,
        job_pb2.TOOL_APPROVAL_TIMEOUT_APPROVE,
    )
    plain = await submit(stub, project_id, {"turns": [turn("done")]})
    assert not (await get_job(stub, plain.job_id)).agent.HasField("tool_approval")


async def test_an_approval_delivered_before_the_process_stops_runs_its_call_once_after_it(
    start_server, executor_settings, project_id, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = executor_settings()
    first = await start_server(settings)
    stalled = asyncio.Event()
    start = ToolExecutionRepository.start

    async def stall(self: ToolExecutionRepository, escalation: Any, runner_id: str, *, now: Any) -> Any:
        stalled.set()
        await asyncio.Event().wait()  # the process stops here: delivered, not started

    monkeypatch.setattr(ToolExecutionRepository, "start", stall)
    config = {"turns": [turn("counting", [count("a")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        from .conftest import stub_for

        job = await submit(stub_for(channel), project_id, config, tool_approval=policy())
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)
        await decide(
            escalations_stub(channel),
            raised.escalation_id,
            "approve",
            arguments_digest=raised.tool_call.arguments_digest,
        )
        await asyncio.wait_for(stalled.wait(), RPC_TIMEOUT)
    await first.stop(grace_seconds=0.5)
    assert executions("a") == []

    monkeypatch.setattr(ToolExecutionRepository, "start", start)
    second = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = stub_for(channel)
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
    assert executions("a") == [{"key": "a"}]
    assert types_of(events).count("agent.tool.approved") == 1  # delivered once, before the stop
    assert types_of(events).count("agent.tool.called") == 1


async def test_a_job_cancelled_while_its_approved_call_runs_gets_no_event_after_its_end(
    server: Application, stub, escalations, project_id, counts: Path
) -> None:
    config = {"turns": [turn("counting", [count("h", hold=True)]), turn("done")]}
    job = await submit(stub, project_id, config, tool_approval=policy())
    (raised,) = await pending_of(escalations, job.job_id)
    await decide(
        escalations, raised.escalation_id, "approve", arguments_digest=raised.tool_call.arguments_digest
    )
    await eventually(lambda: asyncio.to_thread((counts / "h.started").exists), bool)
    await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    (counts / "h.release").touch()
    assert await eventually(lambda: execution_state(server, raised.escalation_id), lambda s: s == "done")
    events = await events_of(stub, job.job_id)
    assert events[-1].type == "job.status_changed"
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_CANCELLED
    assert "agent.tool.called" not in types_of(events)
    assert executions("h") == [{"hold": True, "key": "h"}]


async def execution_state(app: Application, escalation_id: str) -> str | None:
    """The stored state of an approved call's execution."""
    database = await open_database(app.database_url)
    try:
        async with database.read() as session:
            return await session.scalar(
                select(ToolExecutionRow.state).where(ToolExecutionRow.escalation_id == escalation_id)
            )
    finally:
        await database.close()
