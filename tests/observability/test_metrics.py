"""Prometheus metrics, scraped from a real server's HTTP endpoint while real work happens."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc
from cofounder_server.clock import ManualClock
from cofounder_server.executor.plugins import Usage
from cofounder_server.executor.prices import PriceTable
from tests.executor.support import finished, ledger, narrate, submit, turn
from tests.executor.test_escalations import ask, escalations_stub, pending_of, resolve
from tests.support import RPC_TIMEOUT, eventually

from .support import names, scrape, scrape_text, value

SERVICE = "/cofounder.agent.v1.AgentControlService"


@pytest.fixture
async def metered(start_server):
    return await start_server(metrics_listen="127.0.0.1:0")


@pytest.fixture
async def stub(metered):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        await channel.channel_ready()
        yield agent_control_service_pb2_grpc.AgentControlServiceStub(channel)


async def test_metrics_are_off_unless_configured(start_server) -> None:
    app = await start_server()
    assert app.metrics_port is None


async def test_the_metrics_address_bound_is_logged(start_server, caplog) -> None:
    caplog.set_level("INFO", logger="cofounder_server.observability.wiring")
    app = await start_server(metrics_listen="127.0.0.1:0")
    assert app.metrics_port not in (None, 0)
    said = [record.getMessage() for record in caplog.records if record.name.endswith("wiring")]
    assert f"metrics served on http://127.0.0.1:{app.metrics_port}/metrics" in said
    assert names(await scrape(app.metrics_port))


async def test_a_scripted_job_moves_the_rpc_executor_model_and_event_metrics(
    metered, stub, project_id
) -> None:
    port = metered.metrics_port
    assert port is not None
    before = await scrape(port)
    config = {
        "turns": [
            turn("plan", [narrate("drafting", phase="design")], tokens=(1000, 100)),
            turn("done", tokens=(2000, 200)),
        ]
    }
    job = await submit(stub, project_id, config, model="metered-model")
    await finished(stub, job.job_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetJob(pb.GetJobRequest(job_id="not-a-uuid"), timeout=RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    delivered = 0
    async for response in stub.WatchJobEvents(
        pb.WatchJobEventsRequest(job_id=job.job_id, after_sequence=0), timeout=RPC_TIMEOUT
    ):
        if response.HasField("events"):
            delivered += len(response.events.events)
    latest = (await stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)).status

    after = await scrape(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "cofounder_rpc_handled_total"
    assert grew(handled, method=f"{SERVICE}/SubmitJob", code="OK") == 1
    assert grew(handled, method=f"{SERVICE}/GetJob", code="INVALID_ARGUMENT") == 1
    assert grew(handled, method=f"{SERVICE}/GetJob", code="OK") >= 1
    assert grew(handled, method=f"{SERVICE}/WatchJobEvents", code="OK") == 1
    assert grew("cofounder_rpc_duration_seconds_count", method=f"{SERVICE}/SubmitJob") == 1
    assert value(after, "cofounder_rpc_streams_open", method=f"{SERVICE}/WatchJobEvents") == 0

    assert grew("cofounder_executor_iterations_total") == 2
    assert grew("cofounder_group_commit_iterations_count") >= 1
    assert grew("cofounder_lease_claims_total", kind="queued") == 1
    assert grew("cofounder_model_calls_total", model="metered-model") == 2
    assert grew("cofounder_model_tokens_total", model="metered-model", direction="input") == 3000
    assert grew("cofounder_model_tokens_total", model="metered-model", direction="output") == 300
    prices = PriceTable.parse("")
    expected_cost = sum(prices.cost(Usage("metered-model", i, o)) for i, o in ((1000, 100), (2000, 200)))
    assert expected_cost == sum(cost for _, cost in await ledger(metered, job.job_id))
    assert grew("cofounder_model_cost_microdollars_total", model="metered-model") == expected_cost

    assert grew("cofounder_events_appended_total") == latest.latest_event_sequence
    assert delivered == latest.latest_event_sequence
    assert grew("cofounder_events_delivered_total") == delivered
    assert grew("cofounder_sql_transaction_duration_seconds_count", kind="write") > 0
    assert grew("cofounder_sql_transaction_duration_seconds_count", kind="read") > 0
    assert (
        sum(
            v - before.get(k, 0.0)
            for k, v in after.items()
            if k[0] == "cofounder_redis_operation_duration_seconds_count"
        )
        > 0
    )
    assert "process_cpu_seconds_total" in names(after)

    # Job gauges come from SQL at scrape time (cached a few seconds).
    gauges = await eventually(
        lambda: scrape(port), lambda s: value(s, "cofounder_jobs", status="ready") == 1, within=15
    )
    assert value(gauges, "cofounder_jobs", status="running") == 0
    assert value(gauges, "cofounder_running_jobs_unleased") == 0
    assert value(gauges, "cofounder_executor_agents_awake") == 0
    assert value(gauges, "cofounder_executor_agents_parked") == 0
    assert value(gauges, "cofounder_executor_awake_memory_bytes") == 0
    assert value(gauges, "cofounder_executor_awake_memory_budget_bytes") == 1024 * 2**20


async def test_open_streams_awake_agents_and_running_jobs_are_gauges(metered, stub, project_id, gate) -> None:
    port = metered.metrics_port
    job = await submit(stub, project_id, {"turns": [turn("one"), turn("two")]}, brain="gated")
    call = stub.WatchJobEvents(pb.WatchJobEventsRequest(job_id=job.job_id), timeout=30)
    await asyncio.wait_for(call.read(), RPC_TIMEOUT)  # the snapshot: the stream is open

    watch = f"{SERVICE}/WatchJobEvents"
    samples = await eventually(
        lambda: scrape(port),
        lambda s: (
            value(s, "cofounder_jobs", status="running") == 1
            and value(s, "cofounder_executor_agents_awake") == 1
        ),
        within=15,
    )
    assert value(samples, "cofounder_rpc_streams_open", method=watch) == 1
    # One awake agent with a one-message conversation: at least its base charge.
    assert value(samples, "cofounder_executor_awake_memory_bytes") >= 64 * 1024
    assert value(samples, "cofounder_agents", state="working") == 1
    assert value(samples, "cofounder_lease_holders") == 1
    assert value(samples, "cofounder_running_jobs_unleased") == 0

    call.cancel()
    await eventually(
        lambda: scrape(port), lambda s: value(s, "cofounder_rpc_streams_open", method=watch) == 0
    )
    samples = await scrape(port)
    assert value(samples, "cofounder_rpc_handled_total", method=watch, code="CANCELLED") == 1
    gate.allow(2)
    await finished(stub, job.job_id)


async def test_labels_stay_bounded(metered, stub, project_id) -> None:
    job = await submit(stub, project_id, {"turns": [turn("done")]})
    await finished(stub, job.job_id)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        unknown = channel.unary_unary(f"{SERVICE}/NoSuchMethod-{job.job_id}")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await unknown(b"", timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED

    text = await scrape_text(metered.metrics_port)
    samples = await scrape(metered.metrics_port)
    assert value(samples, "cofounder_rpc_handled_total", method="other", code="UNIMPLEMENTED") == 1
    assert job.job_id not in text
    assert project_id not in text
    assert "local" not in {v for _, labels in samples for _, v in labels}


async def test_an_escalation_is_counted_raised_pending_and_resolved_once(metered, stub, project_id) -> None:
    port = metered.metrics_port
    assert port is not None
    before = await scrape(port)
    config = {"turns": [turn("asking", [ask("q1")]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        escalations = escalations_stub(channel)
        job = await submit(stub, project_id, config)
        (raised,) = await pending_of(escalations, job.job_id)
        waiting = await eventually(
            lambda: scrape(port), lambda s: value(s, "cofounder_escalations_pending") == 1, within=15
        )
        assert value(waiting, "cofounder_escalation_oldest_pending_age_seconds") >= 0
        grew = value(waiting, "cofounder_escalations_raised_total", trigger="agent_question") - value(
            before, "cofounder_escalations_raised_total", trigger="agent_question"
        )
        assert grew == 1

        await resolve(escalations, raised.escalation_id, "pg", request_id="r-1")
        await resolve(escalations, raised.escalation_id, "pg", request_id="r-1")  # a retry: counted once
        await finished(stub, job.job_id)

    after = await eventually(
        lambda: scrape(port), lambda s: value(s, "cofounder_escalations_pending") == 0, within=15
    )
    assert value(after, "cofounder_escalation_oldest_pending_age_seconds") == 0
    source = {"source": "person"}
    resolved = "cofounder_escalations_resolved_total"
    assert value(after, resolved, **source) - value(before, resolved, **source) == 1
    assert value(after, resolved, source="deadline") == value(before, resolved, source="deadline")
    assert value(after, "cofounder_escalations_expired_total") == value(
        before, "cofounder_escalations_expired_total"
    )


@pytest.mark.parametrize("default", ["sqlite", ""])
async def test_a_deadline_counts_its_escalation_resolved_by_the_deadline_or_expired(
    metered, stub, project_id, manual_clock: ManualClock, default: str
) -> None:
    port = metered.metrics_port
    assert port is not None
    before = await scrape(port)
    extra: dict[str, Any] = {"deadline_seconds": 60, **({"default": default} if default else {})}
    config = {"turns": [turn("asking", [ask("q1", **extra)]), turn("done")]}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        job = await submit(stub, project_id, config)
        await pending_of(escalations_stub(channel), job.job_id)
    await manual_clock.advance(timedelta(seconds=60))
    await finished(stub, job.job_id)

    after = await scrape(port)
    resolved = value(after, "cofounder_escalations_resolved_total", source="deadline") - value(
        before, "cofounder_escalations_resolved_total", source="deadline"
    )
    expired = value(after, "cofounder_escalations_expired_total") - value(
        before, "cofounder_escalations_expired_total"
    )
    assert (resolved, expired) == ((1, 0) if default else (0, 1))
