"""The ``scripted`` brain: plays turns written in advance, for demos, tests and load generation.

Config (``AgentSpec.config``), all keys optional except one of ``turns`` / ``turns_file``::

    {
      "turns": [ENTRY, ...],       # the script, played in order
      "turns_file": "demo.json",   # or: a JSON file holding that list, under --scripted-turns-dir
      "loop": false                # true: start over after the last turn, forever
    }

An ENTRY is a turn::

    {
      "text": "Looking at the repo",                              # default ""
      "tool_calls": [{"name": "narrate", "input": {...}, "call_id": "c1"}],
                                                                  # call_id defaults to scripted-P-J
      "usage": {"input_tokens": 1000, "output_tokens": 200},     # default 0 and 0
      "stop_reason": "tool_use",    # end_turn | tool_use | max_tokens | refusal;
                                    # default tool_use with tool calls, else end_turn
      "model": "claude-x"           # default AgentSpec.model, else "scripted"
    }

or an injected failure, raised before the turn that follows it::

    {"error": {"message": "overloaded", "retryable": true, "signature": "scripted:overloaded"},
     "times": 3}                    # fail this many attempts (default 1), then move on

Which turn to play is derived from the conversation - the number of assistant messages in
it - never from state kept in the brain, so a job restarted from a checkpoint continues
where it left off. Only the failure count of ``error`` entries lives in the brain: it
resets when the brain is rebuilt (after a restart, the failures are injected again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains._config import (
    as_bool,
    as_int,
    as_list,
    as_mapping,
    as_str,
    check_keys,
)
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

_CONFIG = "agent.config"
_CONFIG_KEYS = frozenset({"turns", "turns_file", "loop"})
_TURN_KEYS = frozenset({"text", "tool_calls", "usage", "stop_reason", "model"})
_ERROR_ENTRY_KEYS = frozenset({"error", "times"})
_ERROR_KEYS = frozenset({"message", "retryable", "signature"})
_CALL_KEYS = frozenset({"name", "input", "call_id"})
_USAGE_KEYS = frozenset({"input_tokens", "output_tokens"})
_DEFAULT_MODEL = "scripted"


@dataclass(frozen=True)
class ScriptedCall:
    """A tool call a scripted turn makes; ``call_id`` empty means "derive one"."""

    name: str
    input: Mapping[str, Any]
    call_id: str


@dataclass(frozen=True)
class ScriptedTurn:
    """One turn of the script."""

    text: str
    tool_calls: tuple[ScriptedCall, ...]
    input_tokens: int
    output_tokens: int
    stop_reason: StopReason
    model: str


@dataclass(frozen=True)
class ScriptedFailure:
    """A :class:`BrainError` raised on ``times`` attempts before the next turn is played."""

    message: str
    retryable: bool
    signature: str
    times: int


@dataclass(frozen=True)
class Script:
    """A validated script.

    ``failures[i]`` are the failures raised before ``turns[i]``; ``failures[len(turns)]``
    those raised after the last turn, before reporting the script exhausted.
    """

    turns: tuple[ScriptedTurn, ...]
    failures: tuple[tuple[ScriptedFailure, ...], ...]
    loop: bool


class ScriptedBrain:
    """Plays a :class:`Script`; see the module docstring for the config it is built from."""

    def __init__(self, script: Script) -> None:
        self._script = script
        # Failure injection is the one thing the conversation cannot tell: it does not
        # change while a call is retried. Count attempts at the current position only.
        self._position = -1
        self._attempts = 0
        # The assistant messages counted so far, and the prefix of the conversation they
        # were counted in (its length and last message): a conversation that only grew
        # since is counted from there, anything else is counted again from the start.
        self._counted = 0
        self._seen = 0
        self._last: Message | None = None

    async def think(self, conversation: Sequence[Message], tools: Sequence[ToolSpec]) -> Turn:
        """The scripted turn for this point of the conversation (``tools`` are not consulted)."""
        position = self._assistant_messages(conversation)
        turns = self._script.turns
        index = position % len(turns) if self._script.loop else min(position, len(turns))
        if position != self._position:
            self._position, self._attempts = position, 0
        attempt = self._attempts
        for failure in self._script.failures[index]:
            if attempt < failure.times:
                self._attempts += 1
                raise BrainError(failure.message, retryable=failure.retryable, signature=failure.signature)
            attempt -= failure.times
        if index == len(turns):
            raise BrainError(
                f"the script has no turn {position + 1} (it has {len(turns)}) and does not loop",
                retryable=False,
                signature="scripted:script_exhausted",
            )
        turn = turns[index]
        return Turn(
            text=turn.text,
            tool_calls=tuple(
                ToolCall(call_id=call.call_id or f"scripted-{position}-{j}", name=call.name, input=call.input)
                for j, call in enumerate(turn.tool_calls)
            ),
            usage=Usage(model=turn.model, input_tokens=turn.input_tokens, output_tokens=turn.output_tokens),
            stop_reason=turn.stop_reason,
        )

    def _assistant_messages(self, conversation: Sequence[Message]) -> int:
        """How many assistant messages ``conversation`` holds; O(new messages) per call when
        the conversation only grew since the last call (the loop appends to one list)."""
        seen = self._seen
        if not (0 < seen <= len(conversation) and conversation[seen - 1] is self._last):
            seen, self._counted = 0, 0
        counted = self._counted
        for index in range(seen, len(conversation)):
            if conversation[index].role == "assistant":
                counted += 1
        self._counted, self._seen = counted, len(conversation)
        self._last = conversation[-1] if conversation else None
        return counted


class ScriptedBrainFactory:
    """Builds :class:`ScriptedBrain` s, validating the whole script up front.

    ``turns_dir`` is the only directory ``turns_file`` may read from: job configs come from
    API callers, who must not make the server read arbitrary files. Empty disables
    ``turns_file``.
    """

    def __init__(self, turns_dir: str) -> None:
        self._turns_dir = Path(turns_dir).resolve() if turns_dir else None

    def __call__(self, spec: AgentSpec) -> ScriptedBrain:
        """A brain playing ``spec.config``; raises :class:`PluginConfigError` if it is invalid."""
        return ScriptedBrain(self.parse(spec))

    def validate(self, spec: AgentSpec) -> None:
        """Check ``spec.config`` whole without I/O: an inline script entry by entry; for
        ``turns_file`` only its name (the file is read and checked when the job runs)."""
        config, loop = _options(spec)
        if "turns" in config:
            field = f"{_CONFIG}.turns"
            _parse_script(as_list(config["turns"], field), field, loop=loop, model=_model(spec))
        else:
            self._turns_file(config)

    def parse(self, spec: AgentSpec) -> Script:
        """The validated script of ``spec``."""
        config, loop = _options(spec)
        if "turns" in config:
            field = f"{_CONFIG}.turns"
            entries = as_list(config["turns"], field)
        else:
            field = f"{_CONFIG}.turns_file"
            entries = _read_file(*self._turns_file(config), field)
        return _parse_script(entries, field, loop=loop, model=_model(spec))

    def _turns_file(self, config: Mapping[str, Any]) -> tuple[Path, str]:
        """The turns directory and the file name ``turns_file`` gives in it."""
        field = f"{_CONFIG}.turns_file"
        name = as_str(config["turns_file"], field, non_empty=True)
        if self._turns_dir is None:
            raise PluginConfigError("turns files are disabled (set --scripted-turns-dir)", field=field)
        # By its name alone (symbolic links are resolved when the file is read).
        if PurePath(name).is_absolute() or ".." in PurePath(name).parts or "\x00" in name:
            raise PluginConfigError("must name a file inside the scripted turns directory", field=field)
        return self._turns_dir, name


def _read_file(turns_dir: Path, name: str, field: str) -> list[Any]:
    path = (turns_dir / name).resolve()
    if not path.is_relative_to(turns_dir):
        raise PluginConfigError("must name a file inside the scripted turns directory", field=field)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PluginConfigError(f"cannot read {name!r}: {exc.strerror}", field=field) from exc
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PluginConfigError(f"{name!r} is not valid JSON: {exc}", field=field) from exc
    return as_list(content, field)


def _options(spec: AgentSpec) -> tuple[Mapping[str, Any], bool]:
    """The config object and its ``loop`` flag, with exactly one of turns and turns_file."""
    config = as_mapping(spec.config, _CONFIG)
    check_keys(config, _CONFIG_KEYS, _CONFIG)
    loop = as_bool(config.get("loop", False), f"{_CONFIG}.loop")
    if ("turns" in config) == ("turns_file" in config):
        raise PluginConfigError("give exactly one of turns and turns_file", field=f"{_CONFIG}.turns")
    return config, loop


def _model(spec: AgentSpec) -> str:
    return spec.model or _DEFAULT_MODEL


def _parse_script(entries: list[Any], field: str, *, loop: bool, model: str) -> Script:
    turns: list[ScriptedTurn] = []
    failures: list[tuple[ScriptedFailure, ...]] = []
    pending: list[ScriptedFailure] = []
    for i, raw in enumerate(entries):
        entry = as_mapping(raw, f"{field}[{i}]")
        if "error" in entry:
            pending.append(_parse_failure(entry, f"{field}[{i}]"))
        else:
            turns.append(_parse_turn(entry, f"{field}[{i}]", model))
            failures.append(tuple(pending))
            pending = []
    if not turns:
        raise PluginConfigError("the script needs at least one turn", field=field)
    if pending and loop:
        # A looping script never runs out, so failures after its last turn would never run.
        raise PluginConfigError("a looping script cannot end with error entries", field=field)
    failures.append(tuple(pending))
    return Script(turns=tuple(turns), failures=tuple(failures), loop=loop)


def _parse_failure(entry: Mapping[str, Any], field: str) -> ScriptedFailure:
    check_keys(entry, _ERROR_ENTRY_KEYS, field)
    error = as_mapping(entry["error"], f"{field}.error")
    check_keys(error, _ERROR_KEYS, f"{field}.error")
    return ScriptedFailure(
        message=as_str(error.get("message", "scripted failure"), f"{field}.error.message"),
        retryable=as_bool(error.get("retryable", True), f"{field}.error.retryable"),
        signature=as_str(
            error.get("signature", "scripted:error"), f"{field}.error.signature", non_empty=True
        ),
        times=as_int(entry.get("times", 1), f"{field}.times", minimum=1),
    )


def _parse_turn(entry: Mapping[str, Any], field: str, model: str) -> ScriptedTurn:
    check_keys(entry, _TURN_KEYS, field)
    calls: list[ScriptedCall] = []
    for j, raw in enumerate(as_list(entry.get("tool_calls", []), f"{field}.tool_calls")):
        calls.append(_parse_call(raw, f"{field}.tool_calls[{j}]"))
    given_ids = [call.call_id for call in calls if call.call_id]
    if len(set(given_ids)) != len(given_ids):
        raise PluginConfigError("call ids must be unique within a turn", field=f"{field}.tool_calls")
    usage = as_mapping(entry.get("usage", {}), f"{field}.usage")
    check_keys(usage, _USAGE_KEYS, f"{field}.usage")
    default_stop = StopReason.TOOL_USE if calls else StopReason.END_TURN
    raw_stop = as_str(entry.get("stop_reason", default_stop), f"{field}.stop_reason")
    try:
        stop_reason = StopReason(raw_stop)
    except ValueError as exc:
        raise PluginConfigError(
            f"must be one of {', '.join(StopReason)}", field=f"{field}.stop_reason"
        ) from exc
    return ScriptedTurn(
        text=as_str(entry.get("text", ""), f"{field}.text"),
        tool_calls=tuple(calls),
        input_tokens=as_int(usage.get("input_tokens", 0), f"{field}.usage.input_tokens", minimum=0),
        output_tokens=as_int(usage.get("output_tokens", 0), f"{field}.usage.output_tokens", minimum=0),
        stop_reason=stop_reason,
        model=as_str(entry.get("model", model), f"{field}.model", non_empty=True),
    )


def _parse_call(raw: object, field: str) -> ScriptedCall:
    call = as_mapping(raw, field)
    check_keys(call, _CALL_KEYS, field)
    if "name" not in call:
        raise PluginConfigError("is required", field=f"{field}.name")
    return ScriptedCall(
        name=as_str(call["name"], f"{field}.name", non_empty=True),
        input=dict(as_mapping(call.get("input", {}), f"{field}.input")),
        call_id=as_str(call.get("call_id", ""), f"{field}.call_id"),
    )
