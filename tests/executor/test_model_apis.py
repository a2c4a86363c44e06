"""Jobs on the real model API brains, end to end: a server whose ``anthropic`` and ``openai``
brains talk to the model-API stand-in over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import job_pb2
from cofounder_server.app import Application
from standins.model_api import CHAT_COMPLETIONS_PATH, MESSAGES_PATH, ModelApiStandIn

from .conftest import Starter, stub_for
from .support import events_of, finished, ledger, submit, types_of

# One microdollar per token, so a call's cost is its tokens.
PRICES = '{"default": {"input": 1000000, "output": 1000000}}'
STEP = ["agent.thinking", "agent.budget_updated"]
TOOL_STEP = [*STEP, "agent.tool.called"]


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
async def standin() -> AsyncIterator[ModelApiStandIn]:
    async with ModelApiStandIn(tool_turns=2, record=True, record_arrivals=True) as server:
        yield server


@pytest.fixture
async def model_server(start_server: Starter, standin: ModelApiStandIn) -> Application:
    return await start_server(
        price_table=PRICES,
        anthropic_base_url=standin.base_url,
        anthropic_api_key="sk-ant-standin",
        openai_base_url=f"{standin.base_url}/v1",
        openai_api_key="sk-standin",
    )


async def run_job(
    server: Application, project_id: str, config: dict[str, Any], *, brain: str, model: str
) -> tuple[job_pb2.Job, list[Any]]:
    """Submit a job of ``brain`` on ``model`` to ``server`` and wait for its end: the job then,
    and its events."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = stub_for(channel)
        job = await submit(stub, project_id, config, brain=brain, model=model)
        return await finished(stub, job.job_id), await events_of(stub, job.job_id)


@pytest.mark.parametrize(
    ("brain", "model", "path"),
    [("openai", "gpt-4.1", CHAT_COMPLETIONS_PATH), ("anthropic", "claude-sonnet-4-5", MESSAGES_PATH)],
)
async def test_a_job_makes_its_tool_calls_on_the_model_api_and_completes(
    model_server: Application, standin: ModelApiStandIn, project_id: str, *, brain: str, model: str, path: str
) -> None:
    done, events = await run_job(model_server, project_id, {"system": "Be brief."}, brain=brain, model=model)

    assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_READY, job_pb2.JOB_OUTCOME_COMPLETED)
    assert types_of(events)[2:-1] == TOOL_STEP + TOOL_STEP + STEP
    called = [e.agent_tool_called for e in events if e.type == "agent.tool.called"]
    assert [(c.tool_name, c.is_error) for c in called] == [("narrate", False), ("narrate", False)]
    assert [e.agent_thinking.text for e in events if e.type == "agent.thinking"][-1] == "Done."
    # Each call costs its tokens, which grow with the conversation; the events carry the spend.
    costs = [cost for _, cost in await ledger(model_server, done.job_id)]
    assert len(costs) == 3
    assert costs[0] < costs[1] < costs[2]
    spent = [
        e.agent_budget_updated.spent_today_microdollars for e in events if e.type == "agent.budget_updated"
    ]
    assert spent == [costs[0], costs[0] + costs[1], sum(costs)]
    assert standin.stats.requests == {path: 3}
    last = standin.requests[-1].body
    assert last["model"] == model
    if brain == "openai":
        assert last["messages"][0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in last["messages"]][1:] == ["user", "assistant", "tool", "assistant", "tool"]
    else:
        assert last["system"] == "Be brief."
        assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user", "assistant", "user"]


async def test_a_rate_limited_call_waits_out_retry_after_and_the_job_completes(
    model_server: Application, standin: ModelApiStandIn, project_id: str
) -> None:
    standin.tool_turns = 0
    standin.fail_next(1, 429, retry_after=0.5)
    done, events = await run_job(model_server, project_id, {}, brain="openai", model="gpt-4.1")

    assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_READY, job_pb2.JOB_OUTCOME_COMPLETED)
    assert "agent.retrying" in types_of(events)
    refused, answered = standin.stats.arrivals
    assert (refused.status, answered.status) == (429, 200)
    assert answered.at - refused.at >= 0.5


async def test_a_job_whose_model_api_refuses_the_key_fails_with_the_reason(
    start_server: Starter, standin: ModelApiStandIn, project_id: str
) -> None:
    server = await start_server(openai_base_url=f"{standin.base_url}/v1", openai_api_key="sk-revoked")
    standin.reply({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}, status=401)
    done, _ = await run_job(server, project_id, {}, brain="openai", model="gpt-4.1")

    assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_OUTCOME_MODEL_ERROR)
    assert "openai:authentication" in done.outcome_detail
    assert standin.stats.requests == {CHAT_COMPLETIONS_PATH: 1}


async def test_a_provider_asking_to_slow_down_is_waited_for_without_counting_as_failures(
    model_server: Application, standin: ModelApiStandIn, project_id: str
) -> None:
    standin.tool_turns = 0
    refusals = 5  # more than the attempts an ordinary failure gets (brain_retries: 3)
    standin.fail_next(refusals, 529, retry_after=0.2)
    done, events = await run_job(model_server, project_id, {}, brain="anthropic", model="claude-sonnet-4-5")

    assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_READY, job_pb2.JOB_OUTCOME_COMPLETED)
    retries = [event for event in events if event.type == "agent.retrying"]
    assert [(r.agent_retrying.attempt, r.agent_retrying.max_attempts) for r in retries] == [
        (n, 0) for n in range(1, refusals + 1)
    ]
    assert {r.agent_retrying.error_signature for r in retries} == {"anthropic:overloaded"}
    for retry in retries:  # the next attempt is announced no earlier than the provider asked
        waited = retry.agent_retrying.next_attempt_time.ToDatetime() - retry.time.ToDatetime()
        assert waited.total_seconds() >= 0.2
    statuses = [arrival.status for arrival in standin.stats.arrivals]
    assert statuses == [529] * refusals + [200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(standin.stats.arrivals)]
    assert min(gaps) >= 0.2


async def test_a_provider_that_keeps_asking_to_slow_down_fails_the_job_past_the_wait_limit(
    start_server: Starter, standin: ModelApiStandIn, project_id: str
) -> None:
    server = await start_server(
        anthropic_base_url=standin.base_url,
        anthropic_api_key="sk-ant-standin",
        provider_wait_limit_seconds=2.0,
    )
    standin.fail_until(standin.clock() + 3600, 429, retry_after=1)
    done, _ = await run_job(server, project_id, {}, brain="anthropic", model="claude-sonnet-4-5")

    assert (done.status, done.outcome) == (job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_OUTCOME_MODEL_ERROR)
    assert "kept asking to slow down" in done.outcome_detail
    assert "anthropic:rate_limit" in done.outcome_detail
    # Waited 1 s twice (2 s in all), then gave up at the third refusal.
    assert [arrival.status for arrival in standin.stats.arrivals] == [429, 429, 429]
