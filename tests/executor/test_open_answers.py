"""Questions answered beyond a list of options, end to end: ``ask_human`` without options
asks for free text, with ``answer_schema`` for a JSON value matching it. A resolve that does
not fit is INVALID_ARGUMENT and records nothing; the answer reaches the agent once, saying
who gave it; a deadline says nobody answered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, job_pb2
from cofounder_server.app import Application
from cofounder_server.clock import ManualClock
from tests.support import RPC_TIMEOUT

from .support import events_of, finished, submit, turn, types_of
from .test_escalations import error_info, escalations_stub, pending_of, tool_messages

SCHEMA = {
    "type": "object",
    "properties": {"replicas": {"type": "integer", "minimum": 1}, "region": {"enum": ["eu", "us"]}},
    "required": ["replicas", "region"],
    "additionalProperties": False,
}


@pytest.fixture
async def escalations(server: Application) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield escalations_stub(channel)


def question(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": "ask_human", "call_id": call_id, "input": {"question": "How should we scale?", **extra}}


async def answer(escalations: Any, escalation_id: str, **fields: Any) -> Any:
    return await escalations.ResolveEscalation(
        escalation_service_pb2.ResolveEscalationRequest(escalation_id=escalation_id, **fields),
        timeout=RPC_TIMEOUT,
    )


async def refused(escalations: Any, escalation_id: str, **fields: Any) -> tuple[str, str]:
    """The field and description of the one violation of a refused resolve."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(escalations, escalation_id, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = error_info(caught.value)
    assert bad is not None
    (violation,) = bad.field_violations
    return violation.field, violation.description


async def still_pending(escalations: Any, escalation_id: str) -> None:
    got = await escalations.GetEscalation(
        escalation_service_pb2.GetEscalationRequest(escalation_id=escalation_id), timeout=RPC_TIMEOUT
    )
    assert got.escalation.status == escalation_pb2.ESCALATION_STATUS_PENDING
    assert got.escalation.answer == ""


async def test_a_free_text_answer_reaches_the_agent_once(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("asking", [question("q1", max_answer_chars=40)]), turn("done")]}
    job = await submit(stub, project_id, config)
    (raised,) = await pending_of(escalations, job.job_id)
    assert raised.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_TEXT
    assert raised.answer_max_chars == 40
    assert list(raised.options) == []

    assert await refused(escalations, raised.escalation_id, answer="x" * 41) == (
        "answer",
        "must be at most 40 characters",
    )
    field, _ = await refused(escalations, raised.escalation_id, decision="pg")
    assert field == "decision"
    field, _ = await refused(escalations, raised.escalation_id)
    assert field == "decision"  # neither a decision nor an answer
    await still_pending(escalations, raised.escalation_id)

    response = await answer(
        escalations, raised.escalation_id, answer="Two replicas in eu-west", request_id="a1"
    )
    assert response.escalation.answer == "Two replicas in eu-west"
    replay = await answer(
        escalations, raised.escalation_id, answer="Two replicas in eu-west", request_id="a1"
    )
    assert replay.escalation.resolve_time == response.escalation.resolve_time
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert (await tool_messages(server, job.job_id))["q1"] == "Answered by local:\nTwo replicas in eu-west"
    events = await events_of(stub, job.job_id)
    assert types_of(events).count("agent.escalation_resolved") == 1
    resolved = next(e for e in events if e.type == "agent.escalation_resolved").agent_escalation_resolved
    assert resolved.delivered == "Answered by local:\nTwo replicas in eu-west"


async def test_a_value_answer_must_match_the_questions_schema(
    server: Application, stub, escalations, project_id
) -> None:
    config = {"turns": [turn("asking", [question("q1", answer_schema=SCHEMA)]), turn("done")]}
    job = await submit(stub, project_id, config)
    (raised,) = await pending_of(escalations, job.job_id)
    assert raised.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_VALUE
    assert json.loads(raised.answer_schema_json) == SCHEMA

    for text, path in (
        ('{"replicas": "two", "region": "eu"}', "$.replicas"),
        ('{"replicas": 0, "region": "eu"}', "$.replicas"),
        ('{"replicas": 2, "region": "asia"}', "$.region"),
        ('{"replicas": 2}', "$"),
    ):
        field, description = await refused(escalations, raised.escalation_id, answer=text)
        assert field == "answer"
        assert f"at {path}" in description, description
    field, description = await refused(escalations, raised.escalation_id, answer="two please")
    assert (field, description.startswith("must be JSON text")) == ("answer", True)
    await still_pending(escalations, raised.escalation_id)

    await answer(escalations, raised.escalation_id, answer='{"region": "eu", "replicas": 2}')
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    told = (await tool_messages(server, job.job_id))["q1"]
    assert told == 'Answered by local with the value: {"region": "eu", "replicas": 2}'


async def test_an_unanswered_open_question_says_nobody_answered_at_its_deadline(
    server: Application, stub, escalations, project_id, manual_clock: ManualClock
) -> None:
    config = {"turns": [turn("asking", [question("q1", deadline_seconds=60)]), turn("done")]}
    job = await submit(stub, project_id, config)
    (raised,) = await pending_of(escalations, job.job_id)
    await manual_clock.advance(timedelta(seconds=60))
    assert (await finished(stub, job.job_id)).status == job_pb2.JOB_STATUS_READY
    assert (await tool_messages(server, job.job_id))["q1"].startswith("Nobody answered by the deadline")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(escalations, raised.escalation_id, answer="too late")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
