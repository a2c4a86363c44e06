"""What the brains on a provider's official SDK (``anthropic``, ``openai``) have in common.

Each adapter keeps its wire format, its error mapping and the SDK call itself; here are
the brain's state and the factory around it: the chat options of ``AgentSpec.config``, the
check that the optional SDK is installed, one SDK client and gate per account (from
:class:`~cofounder_server.executor.brains.provider_access.ModelClients`) and the client
settings every adapter uses.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains._config import chat_options
from cofounder_server.executor.brains.provider_access import Client, ModelClients, ProviderGate, token_count
from cofounder_server.executor.plugin_errors import PluginConfigError
from cofounder_server.executor.plugins import StopReason, ToolCall, Usage


class SdkBrain(Generic[Client]):
    """A brain that calls its model through a shared SDK client, each call through the
    account's gate; subclasses send the call (``think``)."""

    def __init__(
        self, client: Client, gate: ProviderGate, *, model: str, max_tokens: int, system: str
    ) -> None:
        self._client = client
        self._gate = gate
        self._model = model
        self._max_tokens = max_tokens
        self._system = system


class SdkBrainFactory(abc.ABC, Generic[Client]):
    """Builds brains sharing one SDK client and gate per account from ``clients``.

    Empty ``base_url`` / ``api_key`` leave the choice to the SDK (its defaults, or its
    environment variables). Without ``clients`` the factory keeps its own, which
    :meth:`aclose` closes; shared ``clients`` are closed by their owner.
    """

    provider: ClassVar[str]
    """The brain's name, which is also its SDK's module, its pip extra and its clients' key."""
    example_model: ClassVar[str]
    """A model name for the error that asks for one."""

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

    def validate(self, spec: AgentSpec) -> None:
        """Check the model and config without I/O; the SDK and credentials are checked when
        a brain is built (the process that runs the job may not be the one that took it)."""
        self._options(spec)

    def _options(self, spec: AgentSpec) -> tuple[str, int]:
        return chat_options(spec, self._max_tokens, brain=self.provider, example_model=self.example_model)

    def _shared_client(self) -> tuple[Client, ProviderGate]:
        name = self.provider
        if importlib.util.find_spec(name) is None or importlib.util.find_spec("aiohttp") is None:
            raise PluginConfigError(
                f"the {name} brain is not installed: pip install 'cofounder-server[{name}]'",
                field="agent.brain",
            )
        return self._clients.get(name, self._base_url, self._api_key, self._make_client)

    @abc.abstractmethod
    def _make_client(self) -> Client:
        """A new SDK client for this account (see :meth:`_client_settings`)."""

    def _client_settings(self, aiohttp_client: Callable[..., Any]) -> dict[str, Any]:
        """The SDK client settings of every adapter, given its SDK's aiohttp transport.

        The SDK does not retry: the executor owns retries, counts them per error signature
        and escalates, which SDK-internal retries would hide.
        """
        return {
            "api_key": self._api_key or None,
            "base_url": self._base_url or None,
            "timeout": self._timeout_seconds,
            "max_retries": 0,
            "http_client": aiohttp_client(limits=self._clients.http_limits(), timeout=self._timeout_seconds),
        }

    async def aclose(self) -> None:
        """Close the SDK client if this factory made its own (see the class docstring)."""
        if self._owned:
            await self._clients.aclose()


def response_usage(
    body: Mapping[str, Any], model: str, *, input_counts: tuple[str, ...], output_count: str
) -> Usage:
    """The usage a response body reports: the sum of its ``input_counts`` fields as input
    tokens, its ``output_count`` field as output tokens; ``model`` stands in if the body
    names none. Fields that are missing or not counts are 0."""
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Usage(
        model=str(body.get("model") or model),
        input_tokens=sum(token_count(usage, name) for name in input_counts),
        output_tokens=token_count(usage, output_count),
    )


def stop_reason(known: StopReason | None, calls: Sequence[ToolCall]) -> StopReason:
    """``known``, or for a reason the adapter does not know (a newer or server-specific one)
    a judgement by content, rather than failing a working call."""
    if known is not None:
        return known
    return StopReason.TOOL_USE if calls else StopReason.END_TURN
