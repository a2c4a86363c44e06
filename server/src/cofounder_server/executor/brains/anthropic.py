"""The ``anthropic`` brain: an adapter for the Anthropic Messages API (official ``anthropic`` SDK).

The SDK is an optional extra (``pip install 'cofounder-server[anthropic]'``) and is imported
only when an ``anthropic`` brain is first built, so the server runs without it.

Config (``AgentSpec.config``), all optional::

    {"system": "You are ...", "max_tokens": 4096}

``AgentSpec.model`` is required. The SDK does not retry (``max_retries=0``): the executor
owns retries, counts them per error signature and escalates, which SDK-internal retries
would hide. Every brain of one account shares one SDK client (on the aiohttp transport)
and one gate that honours the API's ``retry-after`` for all of them (see
:mod:`~cofounder_server.executor.brains.provider_access`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cofounder_server import observability
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.provider_access import ProviderGate, response_json, status_verdict
from cofounder_server.executor.brains.sdk_brains import (
    SdkBrain,
    SdkBrainFactory,
    response_usage,
    stop_reason,
)
from cofounder_server.executor.plugin_errors import PluginConfigError
from cofounder_server.executor.plugins import (
    BrainError,
    Message,
    StopReason,
    ToolCall,
    ToolSpec,
    Turn,
)

if TYPE_CHECKING:
    from anthropic import AnthropicError, AsyncAnthropic

_STOP_REASONS = {
    "end_turn": StopReason.END_TURN,
    # Only sent when the request gives stop_sequences (ours never do); a natural end.
    "stop_sequence": StopReason.END_TURN,
    "tool_use": StopReason.TOOL_USE,
    "max_tokens": StopReason.MAX_TOKENS,
    # The turn is unfinished in both cases below; "continue" is what the API expects next,
    # which is how the executor treats MAX_TOKENS. pause_turn only comes with server-side
    # tools, which this adapter does not send.
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "pause_turn": StopReason.MAX_TOKENS,
    "refusal": StopReason.REFUSAL,
}


def to_messages_api(conversation: Sequence[Message]) -> list[dict[str, Any]]:
    """Our conversation as Messages API ``messages``.

    Tool results become ``tool_result`` blocks of a user message, paired with the
    assistant's ``tool_use`` blocks by ``call_id``. Consecutive messages of the same API role
    are merged (the API wants the roles to alternate), with tool results first in a user
    message as the API requires. Empty text is dropped: the API rejects empty text blocks.
    """
    merged: list[dict[str, Any]] = []
    for message in conversation:
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.call_id}
            if message.text:
                result["content"] = message.text
            if message.is_error:
                result["is_error"] = True
            blocks.append(result)
        elif message.text:
            blocks.append({"type": "text", "text": message.text})
        if message.role == "assistant":
            blocks.extend(
                {"type": "tool_use", "id": call.call_id, "name": call.name, "input": dict(call.input)}
                for call in message.tool_calls
            )
        role = "assistant" if message.role == "assistant" else "user"
        if not blocks:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"].extend(blocks)
        else:
            merged.append({"role": role, "content": blocks})
    for entry in merged:
        if entry["role"] == "user":
            # Stable: keeps tool results in call order and text in conversation order.
            entry["content"].sort(key=lambda block: block["type"] != "tool_result")
    return merged


def to_tools_api(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Our tool specs as Messages API ``tools``."""
    return [
        {"name": tool.name, "description": tool.description, "input_schema": dict(tool.input_schema)}
        for tool in tools
    ]


def to_turn(body: Mapping[str, Any], model: str) -> Turn:
    """A Messages API response body (the JSON as sent) as a :class:`Turn`; ``model`` stands in
    if the response names none. Read as plain JSON rather than through the SDK's models: that
    is a third of the SDK's work per call, and a turn needs few of its fields."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in _list(body.get("content")):
        # Other block types (thinking, server tool results) are not part of a Turn.
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = block.get("input")
            calls.append(
                ToolCall(
                    call_id=str(block.get("id", "")),
                    name=str(block.get("name", "")),
                    input=arguments if isinstance(arguments, dict) else {},
                )
            )
    return Turn(
        text="\n".join(texts),
        tool_calls=tuple(calls),
        # Cached prompt tokens are reported apart from input_tokens, but they are still input
        # the call consumed; leaving them out would let a cached prompt spend under the budget.
        usage=response_usage(
            body,
            model,
            input_counts=("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"),
            output_count="output_tokens",
        ),
        stop_reason=stop_reason(_STOP_REASONS.get(str(body.get("stop_reason") or "")), calls),
    )


def _list(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def to_brain_error(exc: AnthropicError, *, retry_after: float | None = None) -> BrainError:
    """An SDK error as a :class:`BrainError` with a retry verdict and a stable signature.

    Rate limits, overload, 5xx, timeouts and lost connections may pass: retryable. Bad
    requests, credentials, permissions and unknown models will not: not retryable.
    ``retry_after`` is what the gate made of a pause status (see :class:`BrainError`).
    """
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        name, retryable = status_verdict(status)
        return BrainError(
            f"Anthropic API error {status}: {exc.message}",
            retryable=retryable,
            signature=f"anthropic:{name}",
            retry_after=retry_after,
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return BrainError("Anthropic API call timed out", retryable=True, signature="anthropic:timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return BrainError(
            f"cannot reach the Anthropic API: {exc.message}", retryable=True, signature="anthropic:connection"
        )
    return BrainError(f"Anthropic SDK error: {exc}", retryable=False, signature="anthropic:client_error")


class AnthropicBrain(SdkBrain["AsyncAnthropic"]):
    """Thinks by calling the Messages API once per turn (non-streaming), through its gate."""

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        """One Messages API call; SDK errors become :class:`BrainError` (see :func:`to_brain_error`)."""
        import anthropic

        # Plain JSON in the documented wire format: the SDK's TypedDicts for it differ
        # between SDK versions, and the request is checked by tests against the wire anyway.
        optional: dict[str, Any] = {}
        if self._system:
            optional["system"] = self._system
        if tools:
            optional["tools"] = to_tools_api(tools)
        messages = to_messages_api(conversation)
        async with self._gate.call(self._model):
            try:
                response = await self._client.messages.with_raw_response.create(
                    model=self._model,
                    max_tokens=self._max_tokens,
                    messages=messages,  # type: ignore[arg-type]
                    **optional,
                )
                content = await response.read()
            except anthropic.APIStatusError as exc:
                retry_after = self._gate.refused(exc.status_code, exc.response.headers)
                raise to_brain_error(exc, retry_after=retry_after) from exc
            except anthropic.AnthropicError as exc:
                raise to_brain_error(exc) from exc
        return to_turn(response_json(content, provider="anthropic"), self._model)


class AnthropicBrainFactory(SdkBrainFactory["AsyncAnthropic"]):
    """Builds :class:`AnthropicBrain` s sharing one SDK client and gate from ``clients``
    (see :class:`SdkBrainFactory`; the SDK's environment variables are
    ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``)."""

    provider = "anthropic"
    example_model = "claude-sonnet-4-5"

    def __call__(self, spec: AgentSpec) -> AnthropicBrain:
        """A brain for ``spec``; raises :class:`PluginConfigError` for a bad spec or missing SDK/key."""
        system, max_tokens = self._options(spec)
        client, gate = self._shared_client()
        return AnthropicBrain(client, gate, model=spec.model, max_tokens=max_tokens, system=system)

    def _shared_client(self) -> tuple[AsyncAnthropic, ProviderGate]:
        client, gate = super()._shared_client()
        # Without credentials the SDK fails on the first call with a bare TypeError; say it
        # now, when the job is submitted. (``credentials``: token providers of newer SDKs.)
        if (
            client.api_key is None
            and client.auth_token is None
            and getattr(client, "credentials", None) is None
        ):
            raise PluginConfigError(
                "no Anthropic credentials: set --anthropic-api-key or ANTHROPIC_API_KEY", field="agent.brain"
            )
        return client, gate

    def _make_client(self) -> AsyncAnthropic:
        import anthropic

        try:
            return anthropic.AsyncAnthropic(
                **self._client_settings(anthropic.DefaultAioHttpClient),
                # The SDK's own spans join the server's traces when tracing is on; off, the
                # SDK would still build their attributes for every call.
                open_telemetry=None if observability.tracing.enabled else False,
            )
        except anthropic.AnthropicError as exc:
            # E.g. a credentials profile the SDK was pointed at but cannot read.
            raise PluginConfigError(
                f"cannot set up the Anthropic client: {exc}", field="agent.brain"
            ) from exc
