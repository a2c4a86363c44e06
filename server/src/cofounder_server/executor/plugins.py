"""The plug-in interface of the executor: brains that think and tools that act.

A brain turns the conversation so far into the agent's next turn; a tool does one named
thing and reports a result. Both are looked up by name in a :class:`PluginRegistry`, which
third parties extend through the ``cofounder.brains`` / ``cofounder.tools`` entry-point
groups or import paths in config, without editing the server.

Conversations are plain JSON-serialisable values (see :class:`Message`), so checkpoints can
store them and any model adapter can translate them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from cofounder_server.domain.escalations import Question
from cofounder_server.domain.model import AgentSpec


@dataclass(frozen=True)
class ToolCall:
    """The agent asks to run tool ``name`` with ``input``; ``call_id`` pairs it with its result."""

    call_id: str
    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class Message:
    """One entry of a conversation.

    ``role`` is ``user`` (the goal, steering, human guidance), ``assistant`` (the brain's
    text and tool calls) or ``tool`` (one tool result, answering ``call_id``).
    """

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    call_id: str = ""
    tool_name: str = ""
    is_error: bool = False

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON-serialisable dict (for checkpoints)."""
        return {
            "role": self.role,
            "text": self.text,
            "tool_calls": [
                {"call_id": c.call_id, "name": c.name, "input": dict(c.input)} for c in self.tool_calls
            ],
            "call_id": self.call_id,
            "tool_name": self.tool_name,
            "is_error": self.is_error,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Message:
        """The inverse of :meth:`to_json`."""
        return cls(
            role=value["role"],
            text=value.get("text", ""),
            tool_calls=tuple(
                ToolCall(call_id=c["call_id"], name=c["name"], input=c.get("input", {}))
                for c in value.get("tool_calls", ())
            ),
            call_id=value.get("call_id", ""),
            tool_name=value.get("tool_name", ""),
            is_error=bool(value.get("is_error", False)),
        )


class StopReason(StrEnum):
    """Why the brain ended its turn."""

    END_TURN = "end_turn"
    """The agent considers its goal done (no tool calls) or yields the turn."""
    TOOL_USE = "tool_use"
    """The agent wants its tool calls run and their results fed back."""
    MAX_TOKENS = "max_tokens"
    """The model ran out of output tokens mid-turn."""
    REFUSAL = "refusal"
    """The model declined to continue."""


@dataclass(frozen=True)
class Usage:
    """Tokens one model call consumed; the executor prices them into the usage ledger."""

    model: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Turn:
    """What the brain decided: text, tool calls, the tokens it cost and why it stopped."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    stop_reason: StopReason


@dataclass(frozen=True)
class ToolSpec:
    """How a tool presents itself to a brain: name, description and JSON Schema of its input."""

    name: str
    description: str
    input_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})


class BrainError(Exception):
    """The brain could not produce a turn.

    ``retryable`` says whether trying again may help (a timeout, an overloaded API) or not
    (bad credentials, an invalid request). ``signature`` is a normalised description used to
    count retries of the same failure (no ids, timestamps or numbers that vary).
    ``retry_after`` is set when the provider asked for a pause (a rate limit or overload,
    with its ``retry-after`` seconds, or the shared default backoff when it gave none): the
    executor waits at least that many seconds before trying again and does not count the
    failure like an ordinary one, since the call was refused, not broken.
    """

    def __init__(
        self, message: str, *, retryable: bool, signature: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.signature = signature
        self.retry_after = retry_after


class Brain(Protocol):
    """Decides the agent's next turn."""

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        """The next turn given everything so far. Raises :class:`BrainError` on failure."""
        ...


@dataclass(frozen=True)
class ToolResult:
    """What a tool reports back to the agent.

    An error without ``error_type`` is feedback on the call itself (bad input): it goes back
    to the model, which can correct its next call. An error with ``error_type`` (e.g. an
    exception class name) says the action failed: the executor runs the call again, counting
    failures by signature (the tool, ``error_type`` and the normalised ``content``), and
    escalates to a person when the attempts are used up, or at once when retrying cannot
    help. ``retryable`` is the tool's own verdict on that; ``None`` lets the executor decide
    (permission and credential failures are never retried). A result with a ``question``
    asks a person: the agent waits, and the answer becomes the call's result.
    """

    content: str
    is_error: bool = False
    error_type: str = ""
    retryable: bool | None = None
    question: Question | None = None


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may know and do besides its input."""

    job_id: str
    iteration: int
    open_phase: Callable[[str], Awaitable[None]]
    """Emit ``gsd.phase.started`` (closing any open phase first)."""
    close_phase: Callable[[], Awaitable[None]]
    """Emit ``gsd.phase.completed`` for the open phase, if any."""


class Tool(Protocol):
    """One named action the agent can take."""

    @property
    def spec(self) -> ToolSpec:
        """Name, description and input schema shown to the brain."""
        ...

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Do the thing. Failures are results with ``is_error=True``, not exceptions."""
        ...


BrainFactory = Callable[[AgentSpec], Brain]
"""Builds a brain for a job from its agent spec (model and brain-specific config).

A factory may also offer the optional validation step of :class:`ValidatingBrainFactory`;
without it a bad config is found only when the job runs (the job then fails).
"""


class ValidatingBrainFactory(Protocol):
    """A brain factory that can check an agent spec at ``SubmitJob``, before any job exists."""

    def __call__(self, spec: AgentSpec) -> Brain:
        """Build the brain for a job (see :data:`BrainFactory`)."""
        ...

    def validate(self, spec: AgentSpec) -> None:
        """Raise ``PluginConfigError`` naming the first bad field if ``spec`` cannot run.

        Runs on the server's event loop for every ``SubmitJob`` naming this brain: it must
        not do I/O (no files, network or SDK clients) and should take microseconds. Check
        what the spec itself says; what depends on the environment (credentials, files a
        config names) is checked when the brain is built.
        """
        ...


ToolFactory = Callable[[], Tool]
"""Builds a tool instance."""
