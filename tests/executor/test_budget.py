"""Budget: the usage ledger decides; 90 % sleeps until midnight or WakeAgent; past 110 % fails."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import event_pb2, job_pb2
from cofounder_server.clock import ManualClock
from tests.support import RPC_TIMEOUT, eventually

from .conftest import START
from .support import agent_state, events_of, finished, get_job, ledger, status_of, submit, turn, types_of

MIDNIGHT = START.replace(hour=0) + timedelta(days=1)
# Each call costs 4,500 microdollars (1000 in + 100 out tokens at $3 / $15 per million).
CALL = 4500


def three_turns() -> dict[str, object]:
    return {
        "turns": [
            turn("one", [{"name": "echo", "input": {"text": "1"}}]),
            turn("two", [{"name": "echo", "input": {"text": "2"}}]),
            turn("done"),
        ]
    }


async def test_at_90_percent_the_agent_sleeps_until_midnight_then_continues(
    server, stub, redis_client, manual_clock: ManualClock, project_id
) -> None:
    job = await submit(stub, project_id, three_turns(), budget=5000)  # one call = 90 %

    status = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)

    assert status.wake_time.ToDatetime().isoformat() == MIDNIGHT.replace(tzinfo=None).isoformat()
    assert status.budget_percent == 90
    assert status.spent_today_microdollars == CALL
    prefix = f"cofounder:agent:{job.job_id}:"
    assert await redis_client.get(prefix + "state") == b"sleeping"
    assert await redis_client.get(prefix + "budget_pct") == b"90"
    assert await redis_client.get(prefix + "wake_at") == b"2026-03-11T00:00:00+00:00"
    assert 89_000 <= await redis_client.ttl(prefix + "state") <= 90_000
    assert 0 < await redis_client.ttl(prefix + "budget_pct") <= 90
    assert await redis_client.ttl(prefix + "wake_at") == 12 * 3600
    sleeping = [e for e in await events_of(stub, job.job_id) if e.type == "agent.sleeping"]
    assert len(sleeping) == 1
    assert sleeping[0].agent_sleeping.wake_time.ToDatetime() == MIDNIGHT.replace(tzinfo=None)
    assert (await get_job(stub, job.job_id)).status == job_pb2.JOB_STATUS_RUNNING
    assert len(await ledger(server, job.job_id)) == 1  # it finished its turn, then slept

    await manual_clock.advance(timedelta(hours=11, minutes=59))
    assert (await status_of(stub, job.job_id)).agent_state == job_pb2.AGENT_STATE_SLEEPING

    await manual_clock.set(MIDNIGHT)  # a new window: spend starts at zero
    # It wakes, makes one call and sleeps again: wait for that second sleep itself, since the
    # first sleep's state would also read SLEEPING.
    await eventually(
        lambda: events_of(stub, job.job_id), lambda ev: types_of(ev).count("agent.sleeping") == 2
    )
    next_midnight = (MIDNIGHT + timedelta(days=1)).replace(tzinfo=None)
    await eventually(
        lambda: status_of(stub, job.job_id),
        lambda s: s.agent_state == job_pb2.AGENT_STATE_SLEEPING and s.wake_time.ToDatetime() == next_midnight,
    )
    events = await events_of(stub, job.job_id)
    waking = [e.agent_waking for e in events if e.type == "agent.waking"]
    assert [w.reason for w in waking] == [event_pb2.WAKE_REASON_SCHEDULED]

    await manual_clock.set(MIDNIGHT + timedelta(days=1))
    done = await finished(stub, job.job_id)
    assert done.status == job_pb2.JOB_STATUS_READY
    assert [cost for _, cost in await ledger(server, job.job_id)] == [CALL, CALL, CALL]


async def test_wake_agent_tops_up_today_once_and_the_agent_continues(
    server, stub, manual_clock: ManualClock, project_id
) -> None:
    job = await submit(stub, project_id, three_turns(), budget=5000)
    await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)

    request = pb.WakeAgentRequest(job_id=job.job_id, request_id="top-up-1", top_up_microdollars=20_000)
    woken = (await stub.WakeAgent(request, timeout=RPC_TIMEOUT)).status
    retried = (await stub.WakeAgent(request, timeout=RPC_TIMEOUT)).status  # applied once

    assert woken.agent_state == job_pb2.AGENT_STATE_WORKING
    assert not woken.HasField("wake_time")
    assert woken.daily_budget_microdollars == 25_000  # the budget in force today, top-up included
    assert woken.budget_percent == 18  # 4,500 of 25,000, not the 90 % it slept at
    assert retried.job_status in (job_pb2.JOB_STATUS_RUNNING, job_pb2.JOB_STATUS_READY)
    done = await finished(stub, job.job_id)
    assert done.status == job_pb2.JOB_STATUS_READY
    assert done.daily_budget_microdollars == 5000  # the job's base budget: top-ups are per day
    # The summary key is published right after the SQL commit that GetJob already shows, so
    # GetJobStatus may lag by that moment; once it too shows the end, its figures are final.
    final = await eventually(
        lambda: status_of(stub, job.job_id), lambda s: s.job_status == job_pb2.JOB_STATUS_READY
    )
    assert (final.spent_today_microdollars, final.daily_budget_microdollars) == (13_500, 25_000)
    # Same day: 13,500 spent of 5,000 + 20,000 (54 %), so no second sleep.
    updates = [
        e.agent_budget_updated for e in await events_of(stub, job.job_id) if e.type == "agent.budget_updated"
    ]
    assert [(u.spent_today_microdollars, u.daily_budget_microdollars) for u in updates] == [
        (4500, 5000),
        (9000, 25_000),
        (13_500, 25_000),
    ]
    waking = [e for e in await events_of(stub, job.job_id) if e.type == "agent.waking"]
    assert len(waking) == 1
    assert waking[0].agent_waking.top_up_microdollars == 20_000

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WakeAgent(
            pb.WakeAgentRequest(job_id=job.job_id, request_id="top-up-1", top_up_microdollars=7),
            timeout=RPC_TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_waking_early_without_a_top_up_goes_back_to_sleep(stub, project_id) -> None:
    job = await submit(stub, project_id, three_turns(), budget=5000)
    await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)

    await stub.WakeAgent(pb.WakeAgentRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)

    await eventually(
        lambda: events_of(stub, job.job_id), lambda ev: types_of(ev).count("agent.sleeping") == 2
    )
    status = await agent_state(stub, job.job_id, job_pb2.AGENT_STATE_SLEEPING)
    assert status.spent_today_microdollars == CALL  # no model call was made
    assert types_of(await events_of(stub, job.job_id))[-3:] == [
        "agent.sleeping",
        "agent.waking",
        "agent.sleeping",
    ]


async def test_a_runaway_call_past_110_percent_fails_the_job_at_once(
    server, stub, redis_client, project_id
) -> None:
    config = {
        "turns": [
            turn("huge", [{"name": "echo", "input": {"text": "never run"}}], tokens=(10_000, 0)),
            turn("x"),
        ]
    }
    job = await submit(stub, project_id, config, budget=20_000)  # one call: 30,000 = 150 %

    done = await finished(stub, job.job_id)

    assert done.status == job_pb2.JOB_STATUS_FAILED
    assert done.outcome == job_pb2.JOB_OUTCOME_BUDGET_EXCEEDED
    events = await events_of(stub, job.job_id)
    assert "agent.tool.called" not in types_of(events)  # stopped at once, its tools not run
    assert types_of(events)[-2:] == ["agent.budget_exceeded", "job.status_changed"]
    assert events[-2].agent_budget_exceeded.budget_percent == 150
    status = await status_of(stub, job.job_id)
    assert status.agent_state == job_pb2.AGENT_STATE_BUDGET_EXCEEDED
    assert status.budget_percent == 100
    assert await redis_client.get(f"cofounder:agent:{job.job_id}:state") == b"budget_exceeded"


async def test_wake_agent_of_an_awake_agent_is_failed_precondition(stub, gate, project_id) -> None:
    job = await submit(stub, project_id, three_turns(), brain="gated")
    await eventually(lambda: get_job(stub, job.job_id), lambda j: j.status == job_pb2.JOB_STATUS_RUNNING)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WakeAgent(pb.WakeAgentRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None
    assert any(d.Unpack(info) for d in status.details)
    assert info.reason == "AGENT_NOT_SLEEPING"
    gate.allow(3)
    await finished(stub, job.job_id)
