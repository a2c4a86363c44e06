"""Unary calls: what the client sends (metadata, deadlines, request ids) and what it returns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest
from client_fakes import RPC_TIMEOUT, Harness, new_escalation, new_job, rich_status
from google.protobuf import struct_pb2

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client import (
    AUTHORIZATION_HEADER,
    ON_BEHALF_OF_HEADER,
    Client,
    CofounderError,
    EscalationResolution,
    UnavailableError,
)


async def test_token_and_on_behalf_of_reach_the_server_on_every_call(
    client: Client, harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    await client.get_job(job.job_id)
    await client.get_escalation(harness.escalations.add(new_escalation(job.job_id)).escalation_id)
    async with asyncio.timeout(RPC_TIMEOUT):
        async for _ in client.watch_escalations():
            pass

    assert [c.method for c in harness.recorder.calls] == ["GetJob", "GetEscalation", "WatchEscalations"]
    for call in harness.recorder.calls:
        assert call.metadata[AUTHORIZATION_HEADER] == "Bearer secret-token"
        assert call.metadata[ON_BEHALF_OF_HEADER] == "user-1"
    assert (AUTHORIZATION_HEADER, ON_BEHALF_OF_HEADER) == ("authorization", "cofounder-on-behalf-of")


async def test_no_auth_metadata_without_token(make_client: Callable[..., Client], harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    await make_client().get_job(job.job_id)
    (call,) = harness.recorder.calls
    assert AUTHORIZATION_HEADER not in call.metadata
    assert ON_BEHALF_OF_HEADER not in call.metadata


async def test_unary_calls_carry_the_default_deadline(
    make_client: Callable[..., Client], harness: Harness
) -> None:
    job = harness.jobs.add(new_job())
    await make_client(timeout=7.0).get_job_status(job.job_id)
    (call,) = harness.recorder.calls
    # gRPC rounds the deadline it sends up a little; anything near 7 s shows it was applied.
    assert call.time_remaining == pytest.approx(7.0, abs=1.0)


async def test_per_call_timeout_overrides_the_default(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    await client.get_job(job.job_id, timeout=2.0)
    await client.get_job(job.job_id, timeout=None)
    short, unbounded = harness.recorder.calls
    assert short.time_remaining == pytest.approx(2.0, abs=0.5)
    assert unbounded.time_remaining is None


async def test_streams_have_no_deadline_unless_given(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    async with asyncio.timeout(RPC_TIMEOUT):
        async for _ in client.watch_job_events(job.job_id):
            pass
        async for _ in client.watch_job_events(job.job_id, timeout=30.0):
            pass
    default, bounded = harness.recorder.calls_to("WatchJobEvents")
    assert default.time_remaining is None
    assert bounded.time_remaining == pytest.approx(30.0, abs=2.0)


async def test_submit_job_sends_the_request_and_returns_the_job(client: Client, harness: Harness) -> None:
    job = await client.submit_job(
        project_id="demo",
        goal="Write a haiku",
        daily_budget_microdollars=5_000_000,
        agent={"brain": "scripted", "model": "m-1", "config": {"turns": [{"text": "done"}]}},
        labels={"team": "core"},
        request_id="req-1",
    )

    assert isinstance(job, job_pb2.Job)
    assert job.status == job_pb2.JOB_STATUS_QUEUED
    (call,) = harness.recorder.calls
    request: control_pb2.SubmitJobRequest = call.request
    assert request.request_id == "req-1"
    assert (request.project_id, request.goal, request.daily_budget_microdollars) == (
        "demo",
        "Write a haiku",
        5_000_000,
    )
    assert request.agent.brain == "scripted"
    assert request.agent.model == "m-1"
    assert request.agent.config["turns"][0]["text"] == "done"
    assert dict(request.labels) == {"team": "core"}


async def test_submit_job_accepts_an_agent_spec_message(client: Client, harness: Harness) -> None:
    config = struct_pb2.Struct()
    config.update({"temperature": 0.5})
    spec = job_pb2.AgentSpec(brain="anthropic", config=config)
    job = await client.submit_job(project_id="p", goal="g", daily_budget_microdollars=1, agent=spec)
    assert job.agent == spec


async def test_submit_job_rejects_a_malformed_agent_dict(client: Client) -> None:
    with pytest.raises(ValueError, match="invalid agent spec"):
        await client.submit_job(project_id="p", goal="g", daily_budget_microdollars=1, agent={"brian": "x"})


async def test_request_id_is_generated_once_per_call_and_reused_by_retries(
    client: Client, harness: Harness
) -> None:
    harness.recorder.failures["SubmitJob"].append(rich_status(grpc.StatusCode.UNAVAILABLE, "store down"))

    first = await client.submit_job(
        project_id="p", goal="g", daily_budget_microdollars=1, agent={"brain": "b"}
    )
    second = await client.submit_job(
        project_id="p", goal="g", daily_budget_microdollars=1, agent={"brain": "b"}
    )

    failed, retried, other = harness.recorder.calls_to("SubmitJob")
    assert uuid.UUID(failed.request.request_id).version == 4
    # gRPC retried the UNAVAILABLE attempt with the very same request, so with the same key.
    assert retried.request.request_id == failed.request.request_id
    assert retried.metadata.get("grpc-previous-rpc-attempts") == "1"
    assert other.request.request_id != failed.request.request_id
    assert first.job_id != second.job_id


async def test_a_cancelled_sent_by_the_server_is_retried_with_the_same_request_id(
    client: Client, harness: Harness
) -> None:
    # What a draining server's gRPC core answers to a call it received but had not started.
    harness.recorder.failures["SubmitJob"].append(rich_status(grpc.StatusCode.CANCELLED, "CANCELLED"))

    job = await client.submit_job(project_id="p", goal="g", daily_budget_microdollars=1, agent={"brain": "b"})

    cancelled, retried = harness.recorder.calls_to("SubmitJob")
    assert retried.request.request_id == cancelled.request.request_id
    assert retried.metadata.get("grpc-previous-rpc-attempts") == "1"
    assert harness.jobs.by_request_id[retried.request.request_id] == job.job_id


async def test_without_retries_a_cancelled_sent_by_the_server_is_raised(
    make_client: Callable[..., Client], harness: Harness
) -> None:
    harness.recorder.failures["GetJob"].append(rich_status(grpc.StatusCode.CANCELLED, "CANCELLED"))
    with pytest.raises(CofounderError) as caught:
        await make_client(retries=0).get_job("any")
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert len(harness.recorder.calls) == 1


async def test_without_retries_unavailable_is_raised(
    make_client: Callable[..., Client], harness: Harness
) -> None:
    harness.recorder.failures["GetJob"].append(rich_status(grpc.StatusCode.UNAVAILABLE, "store down"))
    with pytest.raises(UnavailableError) as caught:
        await make_client(retries=0).get_job("any")
    assert caught.value.retryable
    assert len(harness.recorder.calls) == 1


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("cancel_job", {"reason": "stop"}),
        ("wake_agent", {"top_up_microdollars": 7}),
    ],
)
async def test_mutations_generate_a_request_id_or_pass_the_given_one(
    client: Client, harness: Harness, method: str, kwargs: dict[str, object]
) -> None:
    job = harness.jobs.add(new_job())
    await getattr(client, method)(job.job_id, **kwargs)
    await getattr(client, method)(job.job_id, request_id="mine", **kwargs)
    generated, given = harness.recorder.calls
    assert uuid.UUID(generated.request.request_id).version == 4
    assert given.request.request_id == "mine"


async def test_each_rpc_returns_the_inner_message(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job(daily_budget_microdollars=100))
    escalation = harness.escalations.add(new_escalation(job.job_id))

    assert (await client.get_job(job.job_id)).job_id == job.job_id

    snapshot = await client.get_job_status(job.job_id)
    assert isinstance(snapshot, job_pb2.JobStatusSnapshot)
    assert snapshot.agent_state == job_pb2.AGENT_STATE_SLEEPING

    woken = await client.wake_agent(job.job_id, top_up_microdollars=50)
    assert isinstance(woken, job_pb2.JobStatusSnapshot)
    assert woken.daily_budget_microdollars == 150
    assert harness.recorder.calls[-1].request.top_up_microdollars == 50

    cancelled = await client.cancel_job(job.job_id, reason="no longer needed")
    assert cancelled.status == job_pb2.JOB_STATUS_CANCELLED
    assert cancelled.outcome_detail == "no longer needed"

    assert (await client.get_escalation(escalation.escalation_id)).problem == "Which database?"
    resolution = await client.resolve_escalation(
        escalation.escalation_id, decision="postgres", guidance="use 16"
    )
    assert isinstance(resolution, EscalationResolution)
    resolved = resolution.escalation
    assert isinstance(resolved, escalation_pb2.Escalation)
    assert (resolved.status, resolved.decision, resolved.guidance) == (
        escalation_pb2.ESCALATION_STATUS_RESOLVED,
        "postgres",
        "use 16",
    )
    assert (resolution.agent_waiting, resolution.agent_wake_time) == (True, None)
    assert uuid.UUID(harness.recorder.calls[-1].request.request_id).version == 4

    wake = datetime(2026, 3, 2, 0, 0, 0, 250000, tzinfo=UTC)
    harness.escalations.agent_wake_time = wake
    asleep = await client.resolve_escalation(escalation.escalation_id, decision="sqlite")
    assert (asleep.agent_waiting, asleep.agent_wake_time) == (False, wake)


async def test_list_jobs_returns_one_page_and_forwards_filters(client: Client, harness: Harness) -> None:
    for _ in range(3):
        harness.jobs.add(new_job("a", status=job_pb2.JOB_STATUS_RUNNING))
    harness.jobs.add(new_job("b", status=job_pb2.JOB_STATUS_RUNNING))

    page = await client.list_jobs(page_size=2, statuses=[job_pb2.JOB_STATUS_RUNNING], project_id="a")

    assert isinstance(page, control_pb2.ListJobsResponse)
    assert len(page.jobs) == 2
    assert page.next_page_token == "2"
    request = harness.recorder.calls[-1].request
    assert list(request.statuses) == [job_pb2.JOB_STATUS_RUNNING]
    assert request.project_id == "a"


async def test_iter_jobs_follows_page_tokens_across_pages(client: Client, harness: Harness) -> None:
    created = [harness.jobs.add(new_job("a", status=job_pb2.JOB_STATUS_QUEUED)) for _ in range(7)]
    harness.jobs.add(new_job("other-project"))

    seen = [
        job.job_id
        async for job in client.iter_jobs(page_size=3, project_id="a", statuses=[job_pb2.JOB_STATUS_QUEUED])
    ]

    assert seen == [job.job_id for job in reversed(created)]
    pages = harness.recorder.calls_to("ListJobs")
    assert [p.request.page_token for p in pages] == ["", "3", "6"]
    assert all(p.request.project_id == "a" and p.request.page_size == 3 for p in pages)
    assert all(list(p.request.statuses) == [job_pb2.JOB_STATUS_QUEUED] for p in pages)
    assert all(p.time_remaining == pytest.approx(RPC_TIMEOUT, abs=1.0) for p in pages)


async def test_iter_escalations_follows_page_tokens(client: Client, harness: Harness) -> None:
    job = harness.jobs.add(new_job())
    created = [harness.escalations.add(new_escalation(job.job_id)) for _ in range(5)]
    harness.escalations.add(new_escalation("another-job"))

    seen = [e.escalation_id async for e in client.iter_escalations(job_id=job.job_id, page_size=2)]

    assert seen == [e.escalation_id for e in reversed(created)]
    assert [c.request.page_token for c in harness.recorder.calls_to("ListEscalations")] == ["", "2", "4"]


async def test_list_escalations_forwards_filters(client: Client, harness: Harness) -> None:
    page = await client.list_escalations(
        job_id="j", statuses=[escalation_pb2.ESCALATION_STATUS_PENDING], page_size=10, page_token="0"
    )
    assert list(page.escalations) == []
    request = harness.recorder.calls[-1].request
    assert (request.job_id, list(request.statuses), request.page_size) == (
        "j",
        [escalation_pb2.ESCALATION_STATUS_PENDING],
        10,
    )


async def test_closed_client_refuses_calls(make_client: Callable[..., Client]) -> None:
    async with make_client() as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_job("x")
    await client.close()  # closing again is harmless


def test_client_options_are_validated() -> None:
    with pytest.raises(ValueError, match="retries"):
        Client(retries=5)
    with pytest.raises(ValueError, match="timeout"):
        Client(timeout=0)
    assert "secret" not in repr(Client("h:1", token="secret"))
