"""Escalations end to end: the scripted agent raises, a person (or the deadline) decides once
through the API, and the agent continues with the answer as its tool call's result.

Each test asserts the job's whole event sequence and its outcome.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, escalation_service_pb2_grpc, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from cofounder_server.domain.changes import Change
from cofounder_server.store.database import open_database
from cofounder_server.store.models import CheckpointMessageRow
from tests.support import RPC_TIMEOUT, eventually, free_port

from .conftest import Starter, stub_for
from .support import agent_state, events_of, finished, narrate, status_of, submit, turn, types_of
from .test_durability import _ready, _spawn

RAISED = ["agent.escalation_raised", "agent.waiting_for_input"]
STEP = ["agent.thinking", "agent.budget_updated"]
START = ["job.status_changed", "job.status_changed"]


def ask(call_id: str, question: str = "Which database?", **extra: Any) -> dict[str, Any]:
    """A scripted ``ask_human`` call offering pg and sqlite."""
    return {
        "name": "ask_human",
        "call_id": call_id,
        "input": {
            "question": question,
            "options": [{"value": "pg", "label": "PostgreSQL"}, {"value": "sqlite", "label": "SQLite"}],
            "recommended": "pg",
            **extra,
        },
    }


def flaky(key: str, fail_times: int) -> dict[str, Any]:
    return {"name": "flaky", "call_id": f"flaky-{key}", "input": {"key": key, "fail_times": fail_times}}


def escalations_stub(channel: grpc.aio.Channel) -> escalation_service_pb2_grpc.EscalationServiceStub:
    return escalation_service_pb2_grpc.EscalationServiceStub(channel)


async def pending_of(escalations, job_id: str, count: int = 1) -> list[escalation_pb2.Escalation]:
    async def read() -> list[escalation_pb2.Escalation]:
        response = await escalations.ListEscalations(
            escalation_service_pb2.ListEscalationsRequest(
                job_id=job_id, statuses=[escalation_pb2.ESCALATION_STATUS_PENDING]
            ),
            timeout=RPC_TIMEOUT,
        )
        return list(response.escalations)

    return await eventually(read, lambda found: len(found) == count)


async def resolve(escalations, escalation_id: str, decision: str, **extra: Any):
    return await escalations.ResolveEscalation(
        escalation_service_pb2.ResolveEscalationRequest(
            escalation_id=escalation_id, decision=decision, **extra
        ),
        timeout=RPC_TIMEOUT,
    )


async def tool_messages(app: Application, job_id: str) -> dict[str, str]:
    """The tool results in the job's saved conversation, by call id."""
    database = await open_database(app.database_url)
    try:
        async with database.read() as session:
            rows = await session.scalars(
                select(CheckpointMessageRow.message)
                .where(CheckpointMessageRow.job_id == job_id)
                .order_by(CheckpointMessageRow.position)
            )
            return {m["call_id"]: m["text"] for m in rows if m["role"] == "tool"}
    finally:
        await database.close()


def error_info(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info = bad = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def test_an_error_that_repeats_escalates_and_its_answer_resets_the_retries(
    server: Application, stub, project_id
) -> None:
    config = {"turns": [turn("try", [flaky("a", 4)]), turn("again", [flaky("a", 4)]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        assert raised.trigger == escalation_pb2.ESCALATION_TRIGGER_REPEATED_ERROR
        assert raised.tool_name == "flaky"
        assert raised.tool_call_id == "flaky-a"
        assert len(raised.attempts) == 3
        assert raised.error_signature.startswith("flaky:ConnectionError:")
        assert [o.value for o in raised.options] == ["retry", "skip", "stop"]
        status = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        assert list(status.pending_escalation_ids) == [raised.escalation_id]

        response = await resolve(escalations, raised.escalation_id, "retry", guidance="the VPN is back")
        assert response.agent_waiting
        assert response.escalation.decision_source == escalation_pb2.DECISION_SOURCE_PERSON
        done = await finished(stub, job.job_id)
        assert done.status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            "agent.retrying",
            "agent.retrying",
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "agent.retrying",  # the answer reset the count: attempt 1 again
            "agent.tool.called",
            *STEP,
            "job.status_changed",
        ]
        retries = [e.agent_retrying for e in events if e.type == "agent.retrying"]
        assert [(r.attempt, r.max_attempts) for r in retries] == [(1, 3), (2, 3), (1, 3)]
        resolved = next(e.agent_escalation_resolved for e in events if e.type == "agent.escalation_resolved")
        assert (resolved.decision, resolved.guidance) == ("retry", "the VPN is back")
        assert resolved.delivered == "Answered by local: retry (Retry).\nGuidance: the VPN is back"
        assert (await status_of(stub, job.job_id)).pending_escalation_ids == []


async def test_a_never_retry_error_escalates_at_once(server: Application, stub, project_id) -> None:
    config = {"turns": [turn("deploy", [{"name": "deploy", "call_id": "d1", "input": {}}]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        assert raised.trigger == escalation_pb2.ESCALATION_TRIGGER_UNRETRYABLE_ERROR
        assert list(raised.attempts) == ["PermissionError: permission denied for /srv/app"]
        await resolve(escalations, raised.escalation_id, "skip")
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]
        assert (await tool_messages(server, job.job_id))["d1"] == "Answered by local: skip (Skip)."


async def test_two_questions_of_one_turn_are_answered_out_of_order_each_to_its_call(
    server: Application, stub, project_id
) -> None:
    config = {"turns": [turn("asking", [ask("q1"), ask("q2", "Which region?")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        first, second = sorted(
            await pending_of(escalations, job.job_id, count=2), key=lambda e: e.tool_call_id
        )
        assert (first.tool_call_id, second.tool_call_id) == ("q1", "q2")
        await resolve(escalations, second.escalation_id, "sqlite")
        # One answer is not enough: the agent waits for both.
        status = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        assert list(status.pending_escalation_ids) == [first.escalation_id]
        response = await resolve(escalations, first.escalation_id, "pg", guidance="managed one")
        assert response.agent_waiting
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            *RAISED,
            "agent.escalation_resolved",
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]
        delivered = [e.agent_escalation_resolved for e in events if e.type == "agent.escalation_resolved"]
        assert [(d.escalation_id, d.decision) for d in delivered] == [
            (first.escalation_id, "pg"),
            (second.escalation_id, "sqlite"),
        ]
        assert await tool_messages(server, job.job_id) == {
            "q1": "Answered by local: pg (PostgreSQL).\nGuidance: managed one",
            "q2": "Answered by local: sqlite (SQLite).",
        }


async def test_a_bad_option_and_repeated_resolves(server: Application, stub, project_id) -> None:
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await resolve(escalations, raised.escalation_id, "mysql", request_id="r-bad")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, violations = error_info(bad.value)
        assert violations is not None
        (violation,) = violations.field_violations
        assert violation.field == "decision"
        assert "pg, sqlite" in violation.description
        assert (await pending_of(escalations, job.job_id))[
            0
        ].status == escalation_pb2.ESCALATION_STATUS_PENDING

        first = await resolve(escalations, raised.escalation_id, "sqlite", request_id="r-1")
        again = await resolve(escalations, raised.escalation_id, "sqlite", request_id="r-1")
        assert again.escalation == first.escalation
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await resolve(escalations, raised.escalation_id, "pg", request_id="r-2")
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = error_info(late.value)
        assert info is not None
        assert info.reason == "ESCALATION_ALREADY_RESOLVED"
        assert info.metadata["decision"] == "sqlite"
        assert info.metadata["decision_source"] == "person"
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]
        assert events[-4].agent_escalation_resolved.decision == "sqlite"


async def test_resolve_through_a_second_server_and_fifty_concurrent_resolves(
    server: Application, start_server: Starter, stub, project_id, tmp_path: Path
) -> None:
    # A second server process on the same SQL and Redis, without an executor.
    other = await start_server(
        executor_enabled=False, data_dir=tmp_path / "other", database_url=server.database_url
    )
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as other_channel,
    ):
        here, there = escalations_stub(channel), escalations_stub(other_channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)

        async def attempt(i: int) -> str:
            try:
                await resolve(
                    there if i % 2 else here,
                    raised.escalation_id,
                    "pg" if i % 3 else "sqlite",
                    request_id=f"r{i}",
                )
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return "won"

        results = await asyncio.gather(*(attempt(i) for i in range(50)))
        assert sorted(set(results)) == ["FAILED_PRECONDITION", "won"]
        assert results.count("won") == 1
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]


async def test_a_resolve_while_the_running_server_restarts_is_delivered_once(
    start_server: Starter, executor_settings, project_id, tmp_path: Path
) -> None:
    settings = executor_settings()
    first = await start_server(settings)
    other = await start_server(
        executor_enabled=False, data_dir=tmp_path / "other", database_url=first.database_url
    )
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        job = await submit(stub_for(channel), project_id, config)
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)
    await first.stop(grace_seconds=0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        response = await resolve(escalations_stub(channel), raised.escalation_id, "pg")
        assert response.escalation.status == escalation_pb2.ESCALATION_STATUS_RESOLVED
    second = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = stub_for(channel)
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]


async def test_cancelling_withdraws_pending_escalations(server: Application, stub, project_id) -> None:
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_CANCELLED
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_withdrawn",
            "job.status_changed",
        ]
        got = await escalations.GetEscalation(
            escalation_service_pb2.GetEscalationRequest(escalation_id=raised.escalation_id),
            timeout=RPC_TIMEOUT,
        )
        assert got.escalation.status == escalation_pb2.ESCALATION_STATUS_WITHDRAWN
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await resolve(escalations, raised.escalation_id, "pg")
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("default", ["sqlite", ""])
async def test_a_deadline_applies_the_default_or_says_nobody_answered(
    server: Application, stub, project_id, manual_clock: ManualClock, default: str
) -> None:
    extra: dict[str, Any] = {"deadline_seconds": 600}
    if default:
        extra["default"] = default
    config = {"turns": [turn("asking", [ask("q1", **extra)]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        assert raised.deadline.ToDatetime(tzinfo=manual_clock.now().tzinfo) == manual_clock.now() + timedelta(
            seconds=600
        )
        await manual_clock.advance(timedelta(seconds=599))
        await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        await manual_clock.advance(timedelta(seconds=1))
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]
        resolved = next(e.agent_escalation_resolved for e in events if e.type == "agent.escalation_resolved")
        assert resolved.decision_source == escalation_pb2.DECISION_SOURCE_DEADLINE
        assert resolved.resolved_by == ""
        got = (
            await escalations.GetEscalation(
                escalation_service_pb2.GetEscalationRequest(escalation_id=raised.escalation_id),
                timeout=RPC_TIMEOUT,
            )
        ).escalation
        if default:
            assert (got.status, got.decision) == (escalation_pb2.ESCALATION_STATUS_RESOLVED, "sqlite")
            assert resolved.delivered.startswith(
                "No answer by the deadline; the default sqlite (SQLite) was applied."
            )
        else:
            assert (got.status, got.decision) == (escalation_pb2.ESCALATION_STATUS_EXPIRED, "")
            assert resolved.delivered.startswith("Nobody answered by the deadline")
        assert "Answered by" not in resolved.delivered


async def test_past_the_escalation_cap_the_job_ends_saying_so(start_server: Starter, project_id) -> None:
    app = await start_server(max_escalations_per_job=1)
    config = {"turns": [turn("one", [ask("q1")]), turn("two", [ask("q2")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = stub_for(channel)
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        await resolve(escalations, raised.escalation_id, "pg")
        done = await finished(stub, job.job_id)
        assert (done.status, done.outcome) == (
            job_pb2.JOB_STATUS_FAILED,
            job_pb2.JOB_OUTCOME_ESCALATION_LIMIT,
        )
        assert "more than 1 times" in done.outcome_detail
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]


async def test_a_resolve_while_the_agent_sleeps_on_its_budget_is_acted_on_when_it_wakes(
    server: Application, stub, project_id, manual_clock: ManualClock
) -> None:
    # The asking turn costs 95 % of the budget: the agent raises, then sleeps until midnight.
    config = {"turns": [turn("asking", [ask("q1")], tokens=(9500, 0)), turn("done", tokens=(0, 0))]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config, budget=30_000)
        (raised,) = await pending_of(escalations, job.job_id)
        sleeping = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
        response = await resolve(escalations, raised.escalation_id, "pg")
        assert not response.agent_waiting
        assert response.agent_wake_time == sleeping.wake_time
        await manual_clock.set(sleeping.wake_time.ToDatetime(tzinfo=manual_clock.now().tzinfo))
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.sleeping",
            "agent.waking",
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]


WOKE_THEN_WAITED = [
    *START,
    *STEP,
    *RAISED,
    "agent.sleeping",
    "agent.waking",
    "agent.waiting_for_input",
    "agent.escalation_resolved",
    *STEP,
    "job.status_changed",
]
"""An agent that asked, slept on its budget, woke to no answer, waited, then took it."""


async def test_an_agent_that_wakes_before_the_answer_waits_again(
    server: Application, stub, project_id, manual_clock: ManualClock
) -> None:
    config = {"turns": [turn("asking", [ask("q1")], tokens=(9500, 0)), turn("done", tokens=(0, 0))]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config, budget=30_000)
        (raised,) = await pending_of(escalations, job.job_id)
        sleeping = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
        await manual_clock.set(sleeping.wake_time.ToDatetime(tzinfo=manual_clock.now().tzinfo))
        await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        response = await resolve(escalations, raised.escalation_id, "sqlite")
        assert response.agent_waiting
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        assert types_of(await events_of(stub, job.job_id)) == WOKE_THEN_WAITED


async def test_an_answer_committed_as_the_agent_parks_is_taken_at_once(
    start_server: Starter, project_id, manual_clock: ManualClock
) -> None:
    """The agent wakes from its budget sleep, finds its question unanswered and records that
    it waits again; the answer is committed and announced before it is back in the parking
    lot. No sweep runs during the test: the agent must take the answer without one."""
    server = await start_server(sweep_interval_seconds=3600.0)
    config = {"turns": [turn("asking", [ask("q1")], tokens=(9500, 0)), turn("done", tokens=(0, 0))]}
    parking, release = asyncio.Event(), asyncio.Event()

    async def hold_the_park(changes: Sequence[Change]) -> None:
        if (
            any(
                event.type == "agent.waiting_for_input" and change.job_id == job.job_id
                for change in changes
                for event in change.events
            )
            and not release.is_set()
        ):
            parking.set()
            await release.wait()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = stub_for(channel)
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config, budget=30_000)
        (raised,) = await pending_of(escalations, job.job_id)
        sleeping = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
        server.changes.before_live = hold_the_park
        try:
            await manual_clock.set(sleeping.wake_time.ToDatetime(tzinfo=manual_clock.now().tzinfo))
            await asyncio.wait_for(parking.wait(), RPC_TIMEOUT)  # looked, found none, not parked yet
            response = await resolve(escalations, raised.escalation_id, "pg")
            assert response.agent_waiting
        finally:
            release.set()
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        assert types_of(await events_of(stub, job.job_id)) == WOKE_THEN_WAITED
        assert "PostgreSQL" in (await tool_messages(server, job.job_id))["q1"]


async def test_a_waiting_agent_survives_kill_9_and_takes_its_answer_once(
    tmp_path: Path, fresh_database_url: str, shared_redis_url: str, project_id
) -> None:
    database_url = fresh_database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    port = free_port()
    processes: list[asyncio.subprocess.Process] = []
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    try:
        processes.append(await _spawn(tmp_path / "a", port, shared_redis_url, database_url))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stub_for(channel)
            await eventually(lambda: _ready(stub), bool, within=30)
            job = await submit(stub, project_id, config)
            (raised,) = await pending_of(escalations_stub(channel), job.job_id)
            await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        processes[-1].send_signal(signal.SIGKILL)
        await processes[-1].wait()

        # Same data dir, same runner: the restarted process resumes the agent, still waiting.
        processes.append(await _spawn(tmp_path / "a", port, shared_redis_url, database_url))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stub_for(channel)
            await eventually(lambda: _ready(stub), bool, within=30)
            await resolve(escalations_stub(channel), raised.escalation_id, "pg")
            assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
            events = await events_of(stub, job.job_id)
            assert types_of(events) == [
                *START,
                *STEP,
                *RAISED,
                "agent.escalation_resolved",
                *STEP,
                "job.status_changed",
            ]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_escalation_watchers_see_the_pending_ones_then_each_change(
    server: Application, stub, project_id
) -> None:
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        watch = escalations.WatchEscalations(
            escalation_service_pb2.WatchEscalationsRequest(job_id=job.job_id), timeout=RPC_TIMEOUT
        )
        first = await watch.read()
        assert [e.escalation_id for e in first.snapshot.pending] == [raised.escalation_id]
        await resolve(escalations, raised.escalation_id, "pg")
        message = await watch.read()
        while not message.HasField("events"):
            message = await watch.read()
        (event,) = message.events.events
        assert (event.type, event.escalation.status, event.escalation.decision) == (
            "agent.escalation_resolved",
            escalation_pb2.ESCALATION_STATUS_RESOLVED,
            "pg",
        )
        watch.cancel()


async def test_a_deadline_fires_once_across_replicas(
    server: Application, start_server: Starter, stub, project_id, *, manual_clock: ManualClock, tmp_path: Path
) -> None:
    # Both processes run a deadline timer on the same clock, SQL and Redis.
    await start_server(executor_enabled=False, data_dir=tmp_path / "other", database_url=server.database_url)
    config = {"turns": [turn("asking", [ask("q1", deadline_seconds=60, default="sqlite")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        await pending_of(escalations, job.job_id)
        await manual_clock.advance(timedelta(seconds=60))
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        assert types_of(await events_of(stub, job.job_id)).count("agent.escalation_resolved") == 1
        watch = escalations.WatchEscalations(
            escalation_service_pb2.WatchEscalationsRequest(job_id=job.job_id, after_sequence=0),
            timeout=RPC_TIMEOUT,
        )
        async for message in watch:
            if message.HasField("events"):  # the backlog, in one batch
                kinds = [event.type for event in message.events.events]
                break
        watch.cancel()
        assert kinds == ["agent.escalation_raised", "agent.escalation_resolved"]


async def test_waiting_costs_neither_budget_nor_tool_calls(
    start_server: Starter, project_id, manual_clock: ManualClock
) -> None:
    # The question and one narrate are two tool calls, however long the wait: below the cap of 3.
    app = await start_server(max_tool_calls=3)
    config = {"turns": [turn("asking", [ask("q1")]), turn("on it", [narrate("deploying")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = stub_for(channel)
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        before = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_WAITING_FOR_INPUT)
        await manual_clock.advance(timedelta(hours=3))  # a long wait, within the same budget day
        during = await status_of(stub, job.job_id)
        assert during.spent_today_microdollars == before.spent_today_microdollars
        await resolve(escalations, raised.escalation_id, "pg")
        done = await finished(stub, job.job_id)
        assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_READY, job_pb2.JOB_OUTCOME_COMPLETED)


async def test_a_deadline_passed_while_no_server_ran_fires_at_start(
    start_server: Starter, executor_settings, project_id, manual_clock: ManualClock
) -> None:
    settings = executor_settings()
    first = await start_server(settings)
    config = {"turns": [turn("asking", [ask("q1", deadline_seconds=60)]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        job = await submit(stub_for(channel), project_id, config)
        (raised,) = await pending_of(escalations_stub(channel), job.job_id)
    await first.stop(grace_seconds=0.5)
    await manual_clock.advance(timedelta(minutes=5))
    second = await start_server(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = stub_for(channel)
        assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
        got = await escalations_stub(channel).GetEscalation(
            escalation_service_pb2.GetEscalationRequest(escalation_id=raised.escalation_id),
            timeout=RPC_TIMEOUT,
        )
        assert got.escalation.status == escalation_pb2.ESCALATION_STATUS_EXPIRED
        assert got.escalation.decision_source == escalation_pb2.DECISION_SOURCE_DEADLINE
        events = await events_of(stub, job.job_id)
        assert types_of(events) == [
            *START,
            *STEP,
            *RAISED,
            "agent.escalation_resolved",
            *STEP,
            "job.status_changed",
        ]
