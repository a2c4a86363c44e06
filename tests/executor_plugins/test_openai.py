"""The openai brain (Chat Completions) against the model-API stand-in: the wire both ways,
tool calls, stop reasons, usage, errors and config checks."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cofounder_server.config import Settings, load_settings
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.openai import (
    INVALID_ARGUMENTS,
    OpenAIBrainFactory,
    to_chat_messages,
    to_turn,
)
from cofounder_server.executor.plugins import BrainError, Message, StopReason, ToolCall
from cofounder_server.executor.registry import PluginConfigError, PluginRegistry
from standins.model_api import CHAT_COMPLETIONS_PATH, ModelApiStandIn
from tests.executor_plugins.support import GOAL, assert_failed_once, turn_error
from tests.support import free_port

pytestmark = pytest.mark.usefixtures("no_ambient_credentials")

API_KEY = "sk-proj-standin-key"
MODEL = "gpt-4.1"

# Recorded Chat Completions responses (shapes as the API returns them).
TOOL_CALLS_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "I'll start by planning the page.",
                "tool_calls": [
                    {
                        "id": "call_12345xyz",
                        "type": "function",
                        "function": {
                            "name": "narrate",
                            "arguments": '{"text":"Planning the landing page","phase":"planning"}',
                        },
                    },
                    {
                        "id": "call_67890abc",
                        "type": "function",
                        "function": {"name": "ask_human", "arguments": ""},
                    },
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 2095,
        "completion_tokens": 503,
        "total_tokens": 2598,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_3a2d42a5b0",
}

STOP_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The landing page is done.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3120, "completion_tokens": 12, "total_tokens": 3132},
}


def error_body(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@pytest.fixture
async def factory(standin: ModelApiStandIn) -> AsyncIterator[OpenAIBrainFactory]:
    made = OpenAIBrainFactory(
        base_url=f"{standin.base_url}/v1", api_key=API_KEY, max_tokens=1024, timeout_seconds=5
    )
    yield made
    await made.aclose()


def brain_of(factory: OpenAIBrainFactory, **config: Any) -> Any:
    return factory(AgentSpec(brain="openai", model=MODEL, config=config))


CONVERSATION = [
    GOAL,
    Message(
        role="assistant",
        text="Two things first.",
        tool_calls=(
            ToolCall(call_id="call_1", name="narrate", input={"text": "Looking around"}),
            ToolCall(call_id="call_2", name="search", input={"q": "hero image"}),
        ),
    ),
    Message(role="tool", text="Noted.", call_id="call_1", tool_name="narrate"),
    Message(role="user", text="Use the brand colours."),
    Message(role="tool", text="no such tool: search", call_id="call_2", tool_name="search", is_error=True),
    Message(role="user", text="And keep it short."),
]


async def test_a_turn_goes_through_the_registry_to_the_api_and_back(standin: ModelApiStandIn) -> None:
    registry = PluginRegistry.default(
        Settings(openai_base_url=f"{standin.base_url}/v1", openai_api_key=API_KEY), entry_points=False
    )
    standin.reply(TOOL_CALLS_RESPONSE)
    brain = registry.brain_for(
        AgentSpec(brain="openai", model=MODEL, config={"system": "Be brief.", "max_tokens": 777.0})
    )

    turn = await brain.think(CONVERSATION, registry.tool_specs())
    await registry.aclose()

    [request] = standin.requests
    assert (request.method, request.path) == ("POST", CHAT_COMPLETIONS_PATH)
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body["model"] == MODEL
    assert request.body["max_completion_tokens"] == 777
    assert not request.body.get("stream")
    assert request.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Build the landing page"},
        {
            "role": "assistant",
            "content": "Two things first.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "narrate", "arguments": '{"text":"Looking around"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q":"hero image"}'},
                },
            ],
        },
        # Tool results right after the calls, then the user's words merged into one message.
        {"role": "tool", "tool_call_id": "call_1", "content": "Noted."},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: no such tool: search"},
        {"role": "user", "content": "Use the brand colours.\n\nAnd keep it short."},
    ]
    tools = {tool["function"]["name"]: tool for tool in request.body["tools"]}
    assert sorted(tools) == ["ask_human", "narrate"]
    assert {tool["type"] for tool in tools.values()} == {"function"}
    assert tools["narrate"]["function"]["parameters"]["required"] == ["text"]
    assert tools["narrate"]["function"]["description"]
    assert tools["ask_human"]["function"]["parameters"]["required"] == ["question"]

    assert turn.text == "I'll start by planning the page."
    assert turn.tool_calls == (
        ToolCall(
            call_id="call_12345xyz",
            name="narrate",
            input={"text": "Planning the landing page", "phase": "planning"},
        ),
        ToolCall(call_id="call_67890abc", name="ask_human", input={}),
    )
    assert turn.stop_reason is StopReason.TOOL_USE
    # prompt_tokens already counts the cached ones.
    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == (
        "gpt-4.1-2025-04-14",
        2095,
        503,
    )


async def test_defaults_leave_out_system_and_tools_and_use_the_configured_max_tokens(
    standin: ModelApiStandIn, factory: OpenAIBrainFactory
) -> None:
    standin.reply(STOP_RESPONSE)

    turn = await brain_of(factory).think([GOAL], [])

    [request] = standin.requests
    assert request.body["max_completion_tokens"] == 1024
    assert request.body["messages"] == [{"role": "user", "content": "Build the landing page"}]
    assert "tools" not in request.body
    assert (turn.text, turn.tool_calls, turn.stop_reason) == (
        "The landing page is done.",
        (),
        StopReason.END_TURN,
    )
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (3120, 12)


@pytest.mark.parametrize(
    ("finish_reason", "with_call", "expected"),
    [
        ("stop", False, StopReason.END_TURN),
        ("tool_calls", True, StopReason.TOOL_USE),
        ("function_call", True, StopReason.TOOL_USE),
        ("length", False, StopReason.MAX_TOKENS),
        ("content_filter", False, StopReason.REFUSAL),
        ("eos", False, StopReason.END_TURN),  # unknown: judged by content
        ("eos", True, StopReason.TOOL_USE),
        (None, False, StopReason.END_TURN),
    ],
)
async def test_finish_reasons_map(
    standin: ModelApiStandIn,
    factory: OpenAIBrainFactory,
    finish_reason: str | None,
    with_call: bool,
    expected: StopReason,
) -> None:
    response = copy.deepcopy(TOOL_CALLS_RESPONSE if with_call else STOP_RESPONSE)
    response["choices"][0]["finish_reason"] = finish_reason
    standin.reply(response)

    turn = await brain_of(factory).think([GOAL], [])

    assert turn.stop_reason is expected


async def test_a_refusal_is_the_turn_text(standin: ModelApiStandIn, factory: OpenAIBrainFactory) -> None:
    response = copy.deepcopy(STOP_RESPONSE)
    response["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
    }
    standin.reply(response)

    turn = await brain_of(factory).think([GOAL], [])

    assert (turn.text, turn.stop_reason) == ("I can't help with that.", StopReason.REFUSAL)


async def test_a_server_that_reports_no_usage_costs_nothing_rather_than_failing(
    standin: ModelApiStandIn, factory: OpenAIBrainFactory
) -> None:
    response = copy.deepcopy(STOP_RESPONSE)
    del response["usage"]
    del response["model"]
    standin.reply(response)

    turn = await brain_of(factory).think([GOAL], [])

    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == (MODEL, 0, 0)


async def test_an_answer_without_choices_is_a_retryable_error(
    standin: ModelApiStandIn, factory: OpenAIBrainFactory
) -> None:
    standin.reply(STOP_RESPONSE | {"choices": []})

    error = await turn_error(brain_of(factory))

    assert (error.retryable, error.signature) == (True, "openai:no_choice")


@pytest.mark.parametrize("arguments", ['{"text": "unterminated', "[1, 2]", '"just a string"', "null"])
async def test_arguments_that_are_not_a_json_object_become_a_call_the_model_is_told_about(
    standin: ModelApiStandIn, factory: OpenAIBrainFactory, arguments: str
) -> None:
    response = copy.deepcopy(TOOL_CALLS_RESPONSE)
    response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    standin.reply(response)
    brain = brain_of(factory)

    turn = await brain.think([GOAL], [])

    bad, good = turn.tool_calls
    assert bad == ToolCall(
        call_id="call_12345xyz", name=f"narrate{INVALID_ARGUMENTS}", input={"arguments": arguments}
    )
    assert good.name == "ask_human"
    # No tool has that name, so the executor answers it with an error result; the next
    # request shows the call as the model wrote it, and what was wrong with it.
    standin.reply(STOP_RESPONSE)
    conversation = [
        GOAL,
        Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls),
        Message(
            role="tool",
            text=f"there is no tool called 'narrate{INVALID_ARGUMENTS}'",
            call_id=bad.call_id,
            tool_name=bad.name,
            is_error=True,
        ),
        Message(role="tool", text="answered", call_id=good.call_id, tool_name=good.name),
    ]
    await brain.think(conversation, [])
    _, assistant, result, _ = standin.requests[1].body["messages"]
    assert assistant["tool_calls"][0]["function"] == {"name": "narrate", "arguments": arguments}
    assert result == {
        "role": "tool",
        "tool_call_id": "call_12345xyz",
        "content": "Error: the arguments of this call are not a valid JSON object, so narrate did not run. "
        "Call it again with its arguments as a JSON object.",
    }


def test_empty_messages_are_dropped_and_same_role_messages_merged() -> None:
    messages = to_chat_messages(
        [
            Message(role="user", text=""),
            GOAL,
            Message(role="assistant", text=""),
            Message(role="assistant", text="First."),
            Message(role="assistant", text="", tool_calls=(ToolCall("c1", "narrate", {}),)),
            Message(role="assistant", text="Second."),
            Message(role="tool", text="", call_id="c1", tool_name="narrate"),
        ]
    )

    assert messages == [
        {"role": "user", "content": GOAL.text},
        {
            "role": "assistant",
            "content": "First.\nSecond.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "narrate", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": ""},
    ]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            429,
            error_body("requests", "Rate limit reached", "rate_limit_exceeded"),
            (True, "openai:rate_limit"),
        ),
        (
            429,
            error_body("insufficient_quota", "No credit", "insufficient_quota"),
            (False, "openai:insufficient_quota"),
        ),
        (500, error_body("server_error", "The server had an error"), (True, "openai:api_error")),
        (502, error_body("server_error", "Bad gateway"), (True, "openai:server_error")),
        (503, error_body("server_error", "Overloaded"), (True, "openai:unavailable")),
        (408, error_body("timeout", "Timed out"), (True, "openai:timeout")),
        (400, error_body("invalid_request_error", "Bad messages"), (False, "openai:invalid_request")),
        (
            401,
            error_body("invalid_request_error", "Incorrect API key", "invalid_api_key"),
            (False, "openai:authentication"),
        ),
        (403, error_body("invalid_request_error", "Not allowed"), (False, "openai:permission")),
        (
            404,
            error_body("invalid_request_error", "No such model", "model_not_found"),
            (False, "openai:not_found"),
        ),
        (422, {"detail": "vLLM-style validation error"}, (False, "openai:http_422")),
    ],
)
async def test_api_errors_map_to_brain_errors_without_sdk_retries(
    standin: ModelApiStandIn,
    factory: OpenAIBrainFactory,
    status: int,
    body: dict[str, Any],
    expected: tuple[bool, str],
) -> None:
    standin.reply(body, status=status)

    error = await turn_error(brain_of(factory))

    assert_failed_once(error, expected, status=status, api_key=API_KEY, standin=standin)


async def test_a_call_that_times_out_is_retryable(standin: ModelApiStandIn) -> None:
    impatient = OpenAIBrainFactory(
        base_url=f"{standin.base_url}/v1", api_key=API_KEY, max_tokens=64, timeout_seconds=0.2
    )
    standin.hang()

    error = await turn_error(brain_of(impatient))
    await impatient.aclose()

    assert (error.retryable, error.signature, error.retry_after) == (
        True,
        "openai:timeout",
        None,
    )


async def test_an_unreachable_api_is_retryable() -> None:
    unreachable = OpenAIBrainFactory(
        base_url=f"http://127.0.0.1:{free_port()}/v1", api_key=API_KEY, max_tokens=64, timeout_seconds=5
    )

    error = await turn_error(brain_of(unreachable))
    await unreachable.aclose()

    assert (error.retryable, error.signature) == (True, "openai:connection")


async def test_the_sdk_finds_key_and_base_url_in_the_environment_when_none_is_configured(
    standin: ModelApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environment")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{standin.base_url}/v1")
    from_env = OpenAIBrainFactory(base_url="", api_key="", max_tokens=64, timeout_seconds=5)

    await brain_of(from_env).think([GOAL], [])
    await from_env.aclose()

    assert standin.requests[0].headers["authorization"] == "Bearer sk-from-environment"


async def test_without_a_key_the_brain_cannot_be_built() -> None:
    keyless = OpenAIBrainFactory(
        base_url="http://127.0.0.1:9/v1", api_key="", max_tokens=64, timeout_seconds=5
    )

    with pytest.raises(
        PluginConfigError, match=r"cannot set up the OpenAI client.*--openai-api-key"
    ) as caught:
        brain_of(keyless)
    await keyless.aclose()

    assert caught.value.field == "agent.brain"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (AgentSpec(brain="openai"), "agent.model"),
        (AgentSpec(brain="openai", model=" "), "agent.model"),
        (AgentSpec(brain="openai", model=MODEL, config={"temperature": 0.2}), "agent.config.temperature"),
        (AgentSpec(brain="openai", model=MODEL, config={"max_tokens": 0}), "agent.config.max_tokens"),
        (AgentSpec(brain="openai", model=MODEL, config={"max_tokens": 1.5}), "agent.config.max_tokens"),
        (AgentSpec(brain="openai", model=MODEL, config={"system": ["x"]}), "agent.config.system"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(spec: AgentSpec, field: str) -> None:
    registry = PluginRegistry.default(Settings(), entry_points=False)

    with pytest.raises(PluginConfigError) as caught:
        registry.validate(spec)

    assert caught.value.field == field


def test_the_api_key_setting_stays_out_of_the_settings_repr() -> None:
    settings = load_settings([], environ={"COFOUNDER_OPENAI_API_KEY": "sk-proj-secret"})

    assert settings.openai_api_key == "sk-proj-secret"
    assert "sk-proj-secret" not in repr(settings)


def test_a_body_without_a_usable_choice_is_a_retryable_failure_and_odd_fields_read_as_empty() -> None:
    for body in ({}, {"choices": []}, {"choices": ["junk"]}):
        with pytest.raises(BrainError) as raised:
            to_turn(body, "m")
        assert raised.value.retryable
        assert raised.value.signature == "openai:no_choice"
    turn = to_turn(
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "narrate", "arguments": None},
                            },
                            {"id": "c2", "type": "custom", "custom": {"name": "x"}},
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": None,
        },
        "gpt-x",
    )
    assert turn.text == ""
    assert turn.tool_calls == (ToolCall(call_id="c1", name="narrate", input={}),)
    assert turn.stop_reason is StopReason.TOOL_USE
    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == ("gpt-x", 0, 0)
