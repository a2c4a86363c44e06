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

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains._config import chat_options
from cofounder_server.executor.brains.provider_access import ModelClients, ProviderGate, status_verdict
from cofounder_server.executor.plugin_errors import PluginConfigError
from cofounder_server.executor.plugins import (
    BrainError,
    Message,
    StopReason,
    ToolCall,
    ToolSpec,
    Turn,
    Usage,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAIError
    from openai.types.chat import ChatCompletion

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


def to_turn(response: ChatCompletion, model: str) -> Turn:
    """A Chat Completions response as a :class:`Turn`; ``model`` stands in if it names none."""
    if not response.choices:
        raise BrainError(
            "the OpenAI-compatible API answered without a choice",
            retryable=True,
            signature="openai:no_choice",
        )
    choice = response.choices[0]
    message = choice.message
    calls: list[ToolCall] = []
    for call in message.tool_calls or ():
        # Other call types (custom tools) are never offered, so never expected.
        if call.type == "function":
            calls.append(_tool_call(call.id, call.function.name, call.function.arguments))
    text = message.content or ""
    stop_reason = _FINISH_REASONS.get(choice.finish_reason or "")
    if message.refusal and not (text or calls):
        text, stop_reason = message.refusal, StopReason.REFUSAL
    if stop_reason is None:
        # An unknown (newer, or server-specific) reason: judge by content.
        stop_reason = StopReason.TOOL_USE if calls else StopReason.END_TURN
    usage = response.usage
    # prompt_tokens already includes the cached ones (prompt_tokens_details.cached_tokens).
    # Servers that leave fields out get zeros rather than a failed call.
    input_tokens = getattr(usage, "prompt_tokens", 0) or 0
    output_tokens = getattr(usage, "completion_tokens", 0) or 0
    return Turn(
        text=text,
        tool_calls=tuple(calls),
        usage=Usage(model=response.model or model, input_tokens=input_tokens, output_tokens=output_tokens),
        stop_reason=stop_reason,
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


class OpenAIBrain:
    """Thinks by calling Chat Completions once per turn (non-streaming), through its gate."""

    def __init__(
        self, client: AsyncOpenAI, gate: ProviderGate, *, model: str, max_tokens: int, system: str
    ) -> None:
        self._client = client
        self._gate = gate
        self._model = model
        self._max_tokens = max_tokens
        self._system = system

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        """One Chat Completions call; SDK errors become :class:`BrainError` (see :func:`to_brain_error`)."""
        import openai

        optional: dict[str, Any] = {}
        if tools:
            optional["tools"] = to_tools_api(tools)
        messages = to_chat_messages(conversation, self._system)
        async with self._gate.call(self._model):
            try:
                response = await self._client.chat.completions.create(
                    model=self._model,
                    messages=messages,  # type: ignore[arg-type]
                    max_completion_tokens=self._max_tokens,
                    **optional,
                )
            except openai.APIStatusError as exc:
                retry_after = (
                    None if _out_of_quota(exc) else self._gate.refused(exc.status_code, exc.response.headers)
                )
                raise to_brain_error(exc, retry_after=retry_after) from exc
            except openai.OpenAIError as exc:
                raise to_brain_error(exc) from exc
        return to_turn(response, self._model)


class OpenAIBrainFactory:
    """Builds :class:`OpenAIBrain` s sharing one SDK client and gate from ``clients``.

    Empty ``base_url`` / ``api_key`` leave the choice to the SDK (its default, or
    ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``). Without ``clients`` the factory keeps its
    own, which :meth:`aclose` closes; shared ``clients`` are closed by their owner.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        max_tokens: int,
        timeout_seconds: float,
        clients: ModelClients | None = None,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._max_tokens = max_tokens
        self._timeout_seconds = timeout_seconds
        self._owned = clients is None
        self._clients = clients or ModelClients()

    def __call__(self, spec: AgentSpec) -> OpenAIBrain:
        """A brain for ``spec``; raises :class:`PluginConfigError` for a bad spec or missing SDK/key."""
        system, max_tokens = self._options(spec)
        if importlib.util.find_spec("openai") is None or importlib.util.find_spec("aiohttp") is None:
            raise PluginConfigError(
                "the openai brain is not installed: pip install 'cofounder-server[openai]'",
                field="agent.brain",
            )
        client, gate = self._clients.get("openai", self._base_url, self._api_key, self._make_client)
        return OpenAIBrain(client, gate, model=spec.model, max_tokens=max_tokens, system=system)

    def validate(self, spec: AgentSpec) -> None:
        """Check the model and config without I/O; the SDK and credentials are checked when
        a brain is built (the process that runs the job may not be the one that took it)."""
        self._options(spec)

    def _options(self, spec: AgentSpec) -> tuple[str, int]:
        return chat_options(spec, self._max_tokens, brain="openai", example_model="gpt-4.1")

    def _make_client(self) -> AsyncOpenAI:
        import openai

        try:
            return openai.AsyncOpenAI(
                api_key=self._api_key or None,
                base_url=self._base_url or None,
                timeout=self._timeout_seconds,
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(
                    limits=self._clients.http_limits(), timeout=self._timeout_seconds
                ),
            )
        except openai.OpenAIError as exc:
            # Above all a missing key (a server that checks none accepts any value).
            raise PluginConfigError(
                f"cannot set up the OpenAI client: {exc} (--openai-api-key sets the key)", field="agent.brain"
            ) from exc

    async def aclose(self) -> None:
        """Close the SDK client if this factory made its own (see the class docstring)."""
        if self._owned:
            await self._clients.aclose()
