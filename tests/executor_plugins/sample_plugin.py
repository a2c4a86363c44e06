"""A third-party plug-in as the registry tests load it: by import path and by entry point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.plugin_errors import PluginConfigError
from cofounder_server.executor.plugins import (
    Message,
    StopReason,
    ToolContext,
    ToolResult,
    ToolSpec,
    Turn,
    Usage,
)
from cofounder_server.executor.registry import PluginRegistry


class EchoBrain:
    """Repeats the last user message and stops."""

    def __init__(self, model: str) -> None:
        self.model = model

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        last = next(m.text for m in reversed(conversation) if m.role == "user")
        return Turn(
            text=f"echo: {last}",
            tool_calls=(),
            usage=Usage(model=self.model, input_tokens=1, output_tokens=1),
            stop_reason=StopReason.END_TURN,
        )


def echo_brain(spec: AgentSpec) -> EchoBrain:
    return EchoBrain(spec.model or "echo")


class ShoutTool:
    """Upper-cases its input."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="shout", description="Upper-case some text.")

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult(str(tool_input.get("text", "")).upper())


def register(registry: PluginRegistry) -> None:
    registry.register_brain("echo", echo_brain)
    registry.register_tool("shout", ShoutTool)


def register_failing(registry: PluginRegistry) -> None:
    raise RuntimeError("the plug-in's own start-up failed")


class PrefixEchoFactory:
    """A brain factory with the optional validation step: ``config`` must be ``{"prefix": str}``."""

    def __call__(self, spec: AgentSpec) -> EchoBrain:
        self.validate(spec)
        return EchoBrain(spec.model or "echo")

    def validate(self, spec: AgentSpec) -> None:
        if set(spec.config) != {"prefix"}:
            raise PluginConfigError("needs exactly the option 'prefix'", field="agent.config")
        if not isinstance(spec.config["prefix"], str):
            raise PluginConfigError("must be a string", field="agent.config.prefix")


class BrokenValidatorFactory:
    """A brain factory whose validation step has a bug."""

    def __call__(self, spec: AgentSpec) -> EchoBrain:
        return EchoBrain("echo")

    def validate(self, spec: AgentSpec) -> None:
        raise KeyError("plug-in bug")


def register_validating(registry: PluginRegistry) -> None:
    registry.register_brain("prefix-echo", PrefixEchoFactory())
    registry.register_brain("broken-check", BrokenValidatorFactory())
    registry.register_brain("echo", echo_brain)
