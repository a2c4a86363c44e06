"""The anthropic brain against a local stand-in of the Messages API serving recorded responses."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cofounder_server.config import Settings, load_settings
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.anthropic import AnthropicBrainFactory, to_messages_api, to_turn
from cofounder_server.executor.brains.provider_access import response_json
from cofounder_server.executor.plugins import BrainError, Message, StopReason, ToolCall
from cofounder_server.executor.registry import PluginConfigError, PluginRegistry
from standins.model_api import ModelApiStandIn
from tests.executor_plugins.support import GOAL, assert_failed_once, turn_error
from tests.support import free_port

API_KEY = "sk-ant-api03-standin-key"
MODEL = "claude-sonnet-5"

# Recorded Messages API responses (shapes as the API returns them).
TOOL_USE_RESPONSE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "text", "text": "I'll start by planning the page."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "narrate",
            "input": {"text": "Planning the landing page", "phase": "planning"},
        },
        {"type": "text", "text": "Then I'll build it."},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "output_tokens": 503,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    },
}

END_TURN_RESPONSE: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "The landing page is done."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3120, "output_tokens": 12},
}


pytestmark = pytest.mark.usefixtures("no_ambient_credentials")


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CStandIn"}


@pytest.fixture
async def factory(standin: ModelApiStandIn) -> AsyncIterator[AnthropicBrainFactory]:
    made = AnthropicBrainFactory(
        base_url=standin.base_url, api_key=API_KEY, max_tokens=1024, timeout_seconds=5
    )
    yield made
    await made.aclose()


def sent_key(headers: dict[str, str]) -> str:
    """The API key a request carried (``x-api-key``; newer SDKs send it as a bearer token)."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    return headers.get("authorization", "").removeprefix("Bearer ")


CONVERSATION = [
    GOAL,
    Message(
        role="assistant",
        text="Two things first.",
        tool_calls=(
            ToolCall(call_id="toolu_1", name="narrate", input={"text": "Looking around"}),
            ToolCall(call_id="toolu_2", name="search", input={"q": "hero image"}),
        ),
    ),
    Message(role="tool", text="Noted.", call_id="toolu_1", tool_name="narrate"),
    Message(role="tool", text="no such tool: search", call_id="toolu_2", tool_name="search", is_error=True),
    Message(role="user", text="Use the brand colours."),
]


async def test_a_turn_goes_through_the_registry_to_the_api_and_back(standin: ModelApiStandIn) -> None:
    registry = PluginRegistry.default(
        Settings(anthropic_base_url=standin.base_url, anthropic_api_key=API_KEY), entry_points=False
    )
    standin.reply(TOOL_USE_RESPONSE)
    brain = registry.brain_for(
        AgentSpec(brain="anthropic", model=MODEL, config={"system": "Be brief.", "max_tokens": 777.0})
    )

    turn = await brain.think(CONVERSATION, registry.tool_specs())
    await registry.aclose()

    [request] = standin.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert sent_key(request.headers) == API_KEY
    assert request.headers["anthropic-version"]
    assert request.body["model"] == MODEL
    assert request.body["max_tokens"] == 777
    assert request.body["system"] == "Be brief."
    assert not request.body.get("stream")
    assert request.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Build the landing page"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Two things first."},
                {"type": "tool_use", "id": "toolu_1", "name": "narrate", "input": {"text": "Looking around"}},
                {"type": "tool_use", "id": "toolu_2", "name": "search", "input": {"q": "hero image"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Noted."},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "no such tool: search",
                    "is_error": True,
                },
                {"type": "text", "text": "Use the brand colours."},
            ],
        },
    ]
    tools = {tool["name"]: tool for tool in request.body["tools"]}
    assert sorted(tools) == ["ask_human", "narrate"]
    assert tools["narrate"]["input_schema"]["required"] == ["text"]
    assert tools["narrate"]["description"]
    # The agent can ask a person through the built-in ask_human tool.
    assert tools["ask_human"]["input_schema"]["required"] == ["question"]
    assert "deadline_seconds" in tools["ask_human"]["input_schema"]["properties"]

    assert turn.text == "I'll start by planning the page.\nThen I'll build it."
    assert turn.tool_calls == (
        ToolCall(
            call_id="toolu_01A09q90qw90lq917835lq9",
            name="narrate",
            input={"text": "Planning the landing page", "phase": "planning"},
        ),
    )
    assert turn.stop_reason is StopReason.TOOL_USE
    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == (MODEL, 2095, 503)


async def test_defaults_leave_out_system_and_tools_and_use_the_configured_max_tokens(
    standin: ModelApiStandIn, factory: AnthropicBrainFactory
) -> None:
    standin.reply(END_TURN_RESPONSE)

    turn = await factory(AgentSpec(brain="anthropic", model=MODEL)).think([GOAL], [])

    [request] = standin.requests
    assert request.body["max_tokens"] == 1024
    assert "system" not in request.body
    assert "tools" not in request.body
    assert (turn.text, turn.tool_calls, turn.stop_reason) == (
        "The landing page is done.",
        (),
        StopReason.END_TURN,
    )


@pytest.mark.parametrize(
    ("api_reason", "expected"),
    [
        ("end_turn", StopReason.END_TURN),
        ("stop_sequence", StopReason.END_TURN),
        ("tool_use", StopReason.TOOL_USE),
        ("max_tokens", StopReason.MAX_TOKENS),
        ("model_context_window_exceeded", StopReason.MAX_TOKENS),
        ("pause_turn", StopReason.MAX_TOKENS),
        ("refusal", StopReason.REFUSAL),
    ],
)
async def test_stop_reasons_map(
    standin: ModelApiStandIn, factory: AnthropicBrainFactory, api_reason: str, expected: StopReason
) -> None:
    response = copy.deepcopy(END_TURN_RESPONSE)
    response["stop_reason"] = api_reason
    standin.reply(response)

    turn = await factory(AgentSpec(brain="anthropic", model=MODEL)).think([GOAL], [])

    assert turn.stop_reason is expected


async def test_cached_prompt_tokens_count_as_input(
    standin: ModelApiStandIn, factory: AnthropicBrainFactory
) -> None:
    response = copy.deepcopy(END_TURN_RESPONSE)
    response["usage"] = {
        "input_tokens": 20,
        "output_tokens": 7,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 3000,
    }
    standin.reply(response)

    turn = await factory(AgentSpec(brain="anthropic", model=MODEL)).think([GOAL], [])

    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (4020, 7)


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (429, "rate_limit_error", (True, "anthropic:rate_limit")),
        (529, "overloaded_error", (True, "anthropic:overloaded")),
        (500, "api_error", (True, "anthropic:api_error")),
        (502, "api_error", (True, "anthropic:server_error")),
        (401, "authentication_error", (False, "anthropic:authentication")),
        (403, "permission_error", (False, "anthropic:permission")),
        (404, "not_found_error", (False, "anthropic:not_found")),
        (400, "invalid_request_error", (False, "anthropic:invalid_request")),
    ],
)
async def test_api_errors_map_to_brain_errors_without_sdk_retries(
    standin: ModelApiStandIn,
    factory: AnthropicBrainFactory,
    status: int,
    kind: str,
    expected: tuple[bool, str],
) -> None:
    standin.reply(error_body(kind, "Something went wrong on request 7d1e"), status=status)

    error = await turn_error(factory(AgentSpec(brain="anthropic", model=MODEL)))

    assert_failed_once(error, expected, status=status, api_key=API_KEY, standin=standin)


async def test_a_call_that_times_out_is_retryable(standin: ModelApiStandIn) -> None:
    impatient = AnthropicBrainFactory(
        base_url=standin.base_url, api_key=API_KEY, max_tokens=64, timeout_seconds=0.2
    )
    standin.hang()

    error = await turn_error(impatient(AgentSpec(brain="anthropic", model=MODEL)))
    await impatient.aclose()

    assert (error.retryable, error.signature) == (True, "anthropic:timeout")


async def test_an_unreachable_api_is_retryable() -> None:
    unreachable = AnthropicBrainFactory(
        base_url=f"http://127.0.0.1:{free_port()}", api_key=API_KEY, max_tokens=64, timeout_seconds=5
    )

    error = await turn_error(unreachable(AgentSpec(brain="anthropic", model=MODEL)))
    await unreachable.aclose()

    assert (error.retryable, error.signature) == (True, "anthropic:connection")


async def test_the_sdk_finds_the_key_in_the_environment_when_none_is_configured(
    standin: ModelApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-environment")
    from_env = AnthropicBrainFactory(base_url=standin.base_url, api_key="", max_tokens=64, timeout_seconds=5)
    standin.reply(END_TURN_RESPONSE)

    await from_env(AgentSpec(brain="anthropic", model=MODEL)).think([GOAL], [])
    await from_env.aclose()

    assert sent_key(standin.requests[0].headers) == "sk-ant-from-environment"


async def test_without_any_credentials_the_brain_cannot_be_built() -> None:
    keyless = AnthropicBrainFactory(
        base_url="http://127.0.0.1:9", api_key="", max_tokens=64, timeout_seconds=5
    )

    with pytest.raises(PluginConfigError, match="no Anthropic credentials") as caught:
        keyless(AgentSpec(brain="anthropic", model=MODEL))
    await keyless.aclose()

    assert caught.value.field == "agent.brain"


async def test_a_credentials_profile_the_sdk_cannot_read_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "empty-config-dir"))
    misconfigured = AnthropicBrainFactory(
        base_url="http://127.0.0.1:9", api_key="", max_tokens=64, timeout_seconds=5
    )

    with pytest.raises(PluginConfigError, match="cannot set up the Anthropic client") as caught:
        misconfigured(AgentSpec(brain="anthropic", model=MODEL))
    await misconfigured.aclose()

    assert caught.value.field == "agent.brain"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (AgentSpec(brain="anthropic"), "agent.model"),
        (AgentSpec(brain="anthropic", model=MODEL, config={"temperature": 0.2}), "agent.config.temperature"),
        (AgentSpec(brain="anthropic", model=MODEL, config={"max_tokens": 0}), "agent.config.max_tokens"),
        (AgentSpec(brain="anthropic", model=MODEL, config={"system": ["x"]}), "agent.config.system"),
    ],
)
async def test_bad_specs_are_rejected_naming_the_field(
    factory: AnthropicBrainFactory, spec: AgentSpec, field: str
) -> None:
    with pytest.raises(PluginConfigError) as caught:
        factory(spec)

    assert caught.value.field == field


def test_empty_messages_are_left_out_and_same_role_messages_merged() -> None:
    messages = to_messages_api(
        [
            GOAL,
            Message(role="user", text="More detail."),
            Message(role="assistant", text=""),
            Message(role="assistant", text="", tool_calls=(ToolCall("c1", "narrate", {}),)),
            Message(role="tool", text="", call_id="c1", tool_name="narrate"),
        ]
    )

    assert messages == [
        {
            "role": "user",
            "content": [{"type": "text", "text": GOAL.text}, {"type": "text", "text": "More detail."}],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "narrate", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]},
    ]


def test_the_api_key_setting_stays_out_of_the_settings_repr() -> None:
    settings = load_settings([], environ={"COFOUNDER_ANTHROPIC_API_KEY": "sk-ant-secret"})

    assert settings.anthropic_api_key == "sk-ant-secret"
    assert "sk-ant-secret" not in repr(settings)


def test_a_response_body_that_is_not_a_json_object_is_a_retryable_provider_failure() -> None:
    for content in (b"<html>bad gateway</html>", b"[1, 2]", b""):
        with pytest.raises(BrainError) as raised:
            response_json(content, provider="anthropic")
        assert raised.value.retryable
        assert raised.value.signature == "anthropic:bad_response"


def test_a_response_without_usage_or_content_is_an_empty_turn_not_a_crash() -> None:
    turn = to_turn({"stop_reason": "end_turn", "usage": {"input_tokens": "7", "output_tokens": True}}, "m")
    assert (turn.text, turn.tool_calls, turn.stop_reason) == ("", (), StopReason.END_TURN)
    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == ("m", 0, 0)
    turn = to_turn(
        {
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "thinking", "thinking": "hidden"},
                {"type": "tool_use", "id": "t1", "name": "narrate", "input": "not an object"},
                "junk",
            ],
            "stop_reason": "brand_new_reason",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3},
        },
        "m",
    )
    assert turn.text == "a"
    assert turn.tool_calls == (ToolCall(call_id="t1", name="narrate", input={}),)
    assert turn.stop_reason is StopReason.TOOL_USE  # an unknown reason: judged by content
    assert (turn.usage.model, turn.usage.input_tokens, turn.usage.output_tokens) == ("claude-x", 15, 3)
