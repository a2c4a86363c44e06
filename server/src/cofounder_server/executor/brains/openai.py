"""The ``openai`` brain: Chat Completions with tools (official ``openai`` SDK).

It speaks to OpenAI and to any server with the same API: vLLM, Ollama, LiteLLM (set
``--openai-base-url``). The SDK is an optional extra (``pip install
'cofounder-server[openai]'``), imported only when an ``openai`` brain is first built.

Config (``AgentSpec.config``), all optional::

    {"system": "You are ...", "max_tokens": 4096}

``AgentSpec.model`` is required; ``max_tokens`` is sent as ``max_completion_tokens``. As with
the ``anthropic`` brain, the SDK does not retry (the executor does), and every brain of one
account shares one SDK client (aiohttp transport) and one gate that honours the server's
``retry-after`` for all of them (see :mod:`~cofounder_server.executor.brains.provider_access`).

A tool call whose arguments are not a JSON object is never run: it becomes a call of a
tool that does not exist, ``NAME (arguments not valid JSON)``, so the executor answers it
with an error result; the next request shows the model its call as it wrote it and, as the
result, what was wrong with the arguments, so it can call again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.provider_access import response_json, status_verdict
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
    from openai import AsyncOpenAI, OpenAIError

_FINISH_REASONS = {
    "stop": StopReason.END_TURN,
    "tool_calls": StopReason.TOOL_USE,
    # The legacy name of tool_calls, from servers that still send it.
    "function_call": StopReason.TOOL_USE,
    "length": StopReason.MAX_TOKENS,
    "content_filter": StopReason.REFUSAL,
}

INVALID_ARGUMENTS = " (arguments not valid JSON)"
"""Appended to the name of a tool call whose arguments could not be read (no real tool
name has a space: OpenAI's function names are ``[a-zA-Z0-9_-]``)."""


def to_chat_messages(conversation: Sequence[Message], system: str = "") -> list[dict[str, Any]]:
    """Our conversation as Chat Completions ``messages``.

    The system prompt comes first as a ``system`` message. An assistant message carries its
    text as ``content`` and its calls as ``tool_calls`` (arguments as a JSON string). Each
    tool result is a ``tool`` message answering its ``tool_call_id``, right after the
    assistant message that made the call; a user message that arrived among the results
    follows them. Consecutive messages of one role are merged (chat templates of many
    open models need the roles to alternate), and empty messages are dropped.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    results: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        messages.extend(results)
        if texts:
            messages.append({"role": "user", "content": "\n\n".join(texts)})
        results.clear()
        texts.clear()

    for message in conversation:
        if message.role == "tool":
            results.append(
                {"role": "tool", "tool_call_id": message.call_id, "content": _result_text(message)}
            )
        elif message.role == "user":
            if message.text:
                texts.append(message.text)
        elif message.text or message.tool_calls:
            flush()
            calls = [_call_json(call) for call in message.tool_calls]
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                if message.text:
                    last["content"] = "\n".join(filter(None, [last["content"], message.text]))
                if calls:
                    last.setdefault("tool_calls", []).extend(calls)
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if calls:
                entry["tool_calls"] = calls
            messages.append(entry)
    flush()
    return messages


def _call_json(call: ToolCall) -> dict[str, Any]:
    if call.name.endswith(INVALID_ARGUMENTS):
        # Shown as the model wrote it, so it can see what to correct.
        name, arguments = call.name.removesuffix(INVALID_ARGUMENTS), str(call.input.get("arguments", ""))
    else:
        name, arguments = call.name, orjson.dumps(dict(call.input)).decode()
    return {"id": call.call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _result_text(message: Message) -> str:
    if message.tool_name.endswith(INVALID_ARGUMENTS):
        name = message.tool_name.removesuffix(INVALID_ARGUMENTS)
        return (
            f"Error: the arguments of this call are not a valid JSON object, so {name} did not run. "
            "Call it again with its arguments as a JSON object."
        )
    # The API has no error flag on tool results: say it in the content.
    return f"Error: {message.text}" if message.is_error else message.text


def to_tools_api(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Our tool specs as Chat Completions function ``tools``."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.input_schema),
            },
        }
        for tool in tools
    ]


def to_turn(body: Mapping[str, Any], model: str) -> Turn:
    """A Chat Completions response body (the JSON as sent) as a :class:`Turn`; ``model`` stands
    in if it names none. Read as plain JSON rather than through the SDK's models (see the
    ``anthropic`` brain's ``to_turn``)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if choice is None:
        raise BrainError(
            "the OpenAI-compatible API answered without a choice",
            retryable=True,
            signature="openai:no_choice",
        )
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    calls: list[ToolCall] = []
    for call in message.get("tool_calls") or ():
        # Other call types (custom tools) are never offered, so never expected.
        function = call.get("function") if isinstance(call, dict) else None
        if call.get("type", "function") == "function" and isinstance(function, dict):
            arguments = function.get("arguments")
            calls.append(
                _tool_call(
                    str(call.get("id", "")),
                    str(function.get("name", "")),
                    arguments if isinstance(arguments, str) else "",
                )
            )
    text = message.get("content") or ""
    text = text if isinstance(text, str) else ""
    reason = _FINISH_REASONS.get(str(choice.get("finish_reason") or ""))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal and not (text or calls):
        text, reason = refusal, StopReason.REFUSAL
    return Turn(
        text=text,
        tool_calls=tuple(calls),
        # prompt_tokens already includes the cached ones (prompt_tokens_details.cached_tokens).
        usage=response_usage(body, model, input_counts=("prompt_tokens",), output_count="completion_tokens"),
        stop_reason=stop_reason(reason, calls),
    )


def _tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    if not arguments.strip():
        return ToolCall(call_id=call_id, name=name, input={})  # some servers send "" for no arguments
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return ToolCall(call_id=call_id, name=f"{name}{INVALID_ARGUMENTS}", input={"arguments": arguments})
    return ToolCall(call_id=call_id, name=name, input=parsed)


def to_brain_error(exc: OpenAIError, *, retry_after: float | None = None) -> BrainError:
    """An SDK error as a :class:`BrainError` with a retry verdict and a stable signature.

    Rate limits, 5xx, timeouts and lost connections may pass: retryable. Bad requests,
    credentials, permissions, unknown models and an exhausted quota will not.
    ``retry_after`` is what the gate made of a pause status (see :class:`BrainError`).
    """
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if _out_of_quota(exc):
            name, retryable = "insufficient_quota", False
        else:
            name, retryable = status_verdict(status)
        return BrainError(
            f"OpenAI-compatible API error {status}: {exc.message}",
            retryable=retryable,
            signature=f"openai:{name}",
            retry_after=retry_after,
        )
    if isinstance(exc, openai.APITimeoutError) and not _failed_to_connect(exc):
        return BrainError("OpenAI-compatible API call timed out", retryable=True, signature="openai:timeout")
    if isinstance(exc, openai.APIConnectionError):
        return BrainError(
            f"cannot reach the OpenAI-compatible API: {exc.message}",
            retryable=True,
            signature="openai:connection",
        )
    return BrainError(f"OpenAI SDK error: {exc}", retryable=False, signature="openai:client_error")


def _failed_to_connect(exc: BaseException) -> bool:
    """Whether a "timeout" was a connection that failed at once (refused, unreachable): the
    SDK's aiohttp transport reports every failed connect as a connect timeout."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def _out_of_quota(exc: OpenAIError) -> bool:
    """A 429 that says the account has no credit left: waiting will not help."""
    return getattr(exc, "code", None) == "insufficient_quota"


class OpenAIBrain(SdkBrain["AsyncOpenAI"]):
    """Thinks by calling Chat Completions once per turn (non-streaming), through its gate."""

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        """One Chat Completions call; SDK errors become :class:`BrainError` (see :func:`to_brain_error`)."""
        import openai

        optional: dict[str, Any] = {}
        if tools:
            optional["tools"] = to_tools_api(tools)
        messages = to_chat_messages(conversation, self._system)
        async with self._gate.call(self._model):
            try:
                response = await self._client.chat.completions.with_raw_response.create(
                    model=self._model,
                    messages=messages,  # type: ignore[arg-type]
                    max_completion_tokens=self._max_tokens,
                    **optional,
                )
                content = response.content
            except openai.APIStatusError as exc:
                retry_after = (
                    None if _out_of_quota(exc) else self._gate.refused(exc.status_code, exc.response.headers)
                )
                raise to_brain_error(exc, retry_after=retry_after) from exc
            except openai.OpenAIError as exc:
                raise to_brain_error(exc) from exc
        return to_turn(response_json(content, provider="openai"), self._model)


class OpenAIBrainFactory(SdkBrainFactory["AsyncOpenAI"]):
    """Builds :class:`OpenAIBrain` s sharing one SDK client and gate from ``clients``
    (see :class:`SdkBrainFactory`; the SDK's environment variables are
    ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``)."""

    provider = "openai"
    example_model = "gpt-4.1"

    def __call__(self, spec: AgentSpec) -> OpenAIBrain:
        """A brain for ``spec``; raises :class:`PluginConfigError` for a bad spec or missing SDK/key."""
        system, max_tokens = self._options(spec)
        client, gate = self._shared_client()
        return OpenAIBrain(client, gate, model=spec.model, max_tokens=max_tokens, system=system)

    def _make_client(self) -> AsyncOpenAI:
        import openai

        try:
            return openai.AsyncOpenAI(**self._client_settings(openai.DefaultAioHttpClient))
        except openai.OpenAIError as exc:
            # Above all a missing key (a server that checks none accepts any value).
            raise PluginConfigError(
                f"cannot set up the OpenAI client: {exc} (--openai-api-key sets the key)", field="agent.brain"
            ) from exc
