"""SubmitJob has the brain check its agent config: a bad one is INVALID_ARGUMENT naming the field
inside the config, and no job is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder.agent.v1 import agent_control_service_pb2_grpc as pb_grpc
from cofounder.agent.v1 import job_pb2
from cofounder_server.app import Application
from cofounder_server.config import Settings
from tests.integration.test_invalid_input import count_jobs, violations_of
from tests.support import RPC_TIMEOUT

ONE_TURN = {"turns": [{"text": "done"}]}

BAD_CONFIGS: dict[str, tuple[str, str, Any, str]] = {
    # case: (brain, model, config, field)
    "scripted-turns-not-a-list": ("scripted", "", {"turns": "oops"}, "agent.config.turns"),
    "scripted-empty-config": ("scripted", "", {}, "agent.config.turns"),
    "scripted-miscased-option": ("scripted", "", {"Turns": ONE_TURN["turns"]}, "agent.config.Turns"),
    "scripted-no-turns": ("scripted", "", {"turns": []}, "agent.config.turns"),
    "scripted-token-count-text": (
        "scripted",
        "",
        {"turns": [{"usage": {"input_tokens": "many"}}]},
        "agent.config.turns[0].usage.input_tokens",
    ),
    "scripted-negative-tokens": (
        "scripted",
        "",
        {"turns": [{"text": "a"}, {"usage": {"output_tokens": -1}}]},
        "agent.config.turns[1].usage.output_tokens",
    ),
    "scripted-bad-stop-reason": (
        "scripted",
        "",
        {"turns": [{"text": "a", "stop_reason": "later"}]},
        "agent.config.turns[0].stop_reason",
    ),
    "scripted-call-without-name": (
        "scripted",
        "",
        {"turns": [{"tool_calls": [{"input": {}}]}]},
        "agent.config.turns[0].tool_calls[0].name",
    ),
    "scripted-loop-not-bool": ("scripted", "", {**ONE_TURN, "loop": "yes"}, "agent.config.loop"),
    "scripted-turns-file-disabled": ("scripted", "", {"turns_file": "demo.json"}, "agent.config.turns_file"),
    "scripted-key-with-newline": ("scripted", "", {**ONE_TURN, "a\nb": 1}, "agent.config['a\\nb']"),
    "anthropic-no-model": ("anthropic", "", {}, "agent.model"),
    "anthropic-max-tokens-text": ("anthropic", "claude-x", {"max_tokens": "lots"}, "agent.config.max_tokens"),
    "anthropic-max-tokens-zero": ("anthropic", "claude-x", {"max_tokens": 0}, "agent.config.max_tokens"),
    "anthropic-max-tokens-fraction": (
        "anthropic",
        "claude-x",
        {"max_tokens": 1.5},
        "agent.config.max_tokens",
    ),
    "anthropic-system-not-text": ("anthropic", "claude-x", {"system": ["be nice"]}, "agent.config.system"),
    "anthropic-unknown-option": ("anthropic", "claude-x", {"temperature": 0.2}, "agent.config.temperature"),
}


def submit_request(project_id: str, brain: str, model: str, config: Any) -> pb.SubmitJobRequest:
    request = pb.SubmitJobRequest(
        project_id=project_id,
        goal="Ship it",
        daily_budget_microdollars=1_000_000,
        agent=job_pb2.AgentSpec(brain=brain, model=model),
    )
    request.agent.config.update(config)
    return request


@pytest.mark.parametrize("case", BAD_CONFIGS)
async def test_a_bad_agent_config_is_refused_at_submit(jobs_stub, project_id, case) -> None:
    brain, model, config, field = BAD_CONFIGS[case]
    before = await count_jobs(jobs_stub)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.SubmitJob(submit_request(project_id, brain, model, config), timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations_of(caught.value)) == [field]
    assert "\n" not in (caught.value.details() or "")
    assert await count_jobs(jobs_stub) == before


@pytest.mark.parametrize(
    ("brain", "model", "config"),
    [
        ("scripted", "", ONE_TURN),
        (
            "scripted",
            "m",
            {"turns": [{"text": "a", "usage": {"input_tokens": 10}}, {"error": {}}], "loop": False},
        ),
        ("anthropic", "claude-sonnet-4-5", {}),
        ("anthropic", "claude-sonnet-4-5", {"system": "Be brief.", "max_tokens": 1024}),
    ],
    ids=["scripted-one-turn", "scripted-with-error-entry", "anthropic-model-only", "anthropic-options"],
)
async def test_a_valid_agent_config_is_accepted(jobs_stub, project_id, brain, model, config) -> None:
    # The session server has no Anthropic credentials: those are checked when an agent runs.
    job = (
        await jobs_stub.SubmitJob(submit_request(project_id, brain, model, config), timeout=RPC_TIMEOUT)
    ).job
    assert job.status == job_pb2.JOB_STATUS_QUEUED


async def test_the_violation_and_other_bad_fields_are_reported(jobs_stub, project_id) -> None:
    request = submit_request(project_id, "scripted", "", {"turns": "oops"})
    request.goal = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs_stub.SubmitJob(request, timeout=RPC_TIMEOUT)
    # Fields are checked first; the brain sees only a well-formed request.
    assert list(violations_of(caught.value)) == ["goal"]


@pytest.fixture
async def plugin_stub(
    settings_for: Callable[..., Settings], database_url: str
) -> AsyncIterator[pb_grpc.AgentControlServiceStub]:
    """A server with third-party brains loaded by import path."""
    app = await Application.start(
        settings_for(database_url, plugins="tests.executor_plugins.sample_plugin:register_validating")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.AgentControlServiceStub(channel)
    await app.stop(grace_seconds=1.0)


async def test_third_party_brains_check_their_config_at_submit(plugin_stub, project_id) -> None:
    accepted = await plugin_stub.SubmitJob(
        submit_request(project_id, "prefix-echo", "", {"prefix": ">"}), timeout=RPC_TIMEOUT
    )
    assert accepted.job.status == job_pb2.JOB_STATUS_QUEUED
    for config, field in (({"prefix": 1}, "agent.config.prefix"), ({}, "agent.config")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await plugin_stub.SubmitJob(
                submit_request(project_id, "prefix-echo", "", config), timeout=RPC_TIMEOUT
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(violations_of(caught.value)) == [field]

    # A brain without the validation step takes any config at submit, as before.
    unchecked = await plugin_stub.SubmitJob(
        submit_request(project_id, "echo", "", {"anything": True}), timeout=RPC_TIMEOUT
    )
    assert unchecked.job.status == job_pb2.JOB_STATUS_QUEUED

    # A validation step that crashes refuses the job rather than failing the call.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plugin_stub.SubmitJob(submit_request(project_id, "broken-check", "", {}), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations_of(caught.value)) == ["agent.config"]
