"""The scripted brain: plays its turns from the conversation, injects failures, rejects bad scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.scripted import ScriptedBrain, ScriptedBrainFactory
from cofounder_server.executor.plugins import BrainError, Message, StopReason, ToolCall, Turn
from cofounder_server.executor.registry import PluginConfigError

GOAL = Message(role="user", text="Build the landing page")

TWO_TURNS: list[dict[str, Any]] = [
    {
        "text": "Planning first.",
        "tool_calls": [{"name": "narrate", "input": {"text": "planning", "phase": "plan"}}],
        "usage": {"input_tokens": 1000, "output_tokens": 200},
    },
    {"text": "Done.", "usage": {"input_tokens": 1500, "output_tokens": 50}},
]


def brain(config: dict[str, Any], *, model: str = "", turns_dir: str = "") -> ScriptedBrain:
    return ScriptedBrainFactory(turns_dir)(AgentSpec(brain="scripted", model=model, config=config))


def after(conversation: list[Message], turn: Turn) -> list[Message]:
    """The conversation once ``turn`` and a result for each of its tool calls are appended."""
    results = [Message(role="tool", text="ok", call_id=c.call_id, tool_name=c.name) for c in turn.tool_calls]
    return [*conversation, Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls), *results]


async def test_turns_play_in_order_with_usage_and_derived_stop_reasons() -> None:
    scripted = brain({"turns": TWO_TURNS}, model="claude-test")

    first = await scripted.think([GOAL], [])
    second = await scripted.think(after([GOAL], first), [])

    assert first.text == "Planning first."
    assert first.tool_calls == (
        ToolCall(call_id="scripted-0-0", name="narrate", input={"text": "planning", "phase": "plan"}),
    )
    assert first.stop_reason is StopReason.TOOL_USE
    assert (first.usage.model, first.usage.input_tokens, first.usage.output_tokens) == (
        "claude-test",
        1000,
        200,
    )
    assert second.text == "Done."
    assert second.tool_calls == ()
    assert second.stop_reason is StopReason.END_TURN
    assert second.usage.input_tokens == 1500


async def test_the_turn_is_derived_from_the_conversation_so_a_fresh_brain_resumes() -> None:
    first = await brain({"turns": TWO_TURNS}).think([GOAL], [])
    conversation = after([GOAL], first)

    # A new brain, as after a restart from a checkpoint holding this conversation.
    resumed = await brain({"turns": TWO_TURNS}).think(conversation, [])
    again = await brain({"turns": TWO_TURNS}).think(conversation, [])

    assert resumed == again
    assert resumed.text == "Done."


async def test_an_exhausted_script_fails_without_retry() -> None:
    scripted = brain({"turns": [{"text": "only"}]})
    first = await scripted.think([GOAL], [])

    with pytest.raises(BrainError) as caught:
        await scripted.think(after([GOAL], first), [])

    assert not caught.value.retryable
    assert caught.value.signature == "scripted:script_exhausted"


async def test_a_looping_script_repeats_with_fresh_call_ids() -> None:
    scripted = brain({"turns": TWO_TURNS, "loop": True}, model="m")
    conversation = [GOAL]
    turns = []
    for _ in range(5):
        turn = await scripted.think(conversation, [])
        turns.append(turn)
        conversation = after(conversation, turn)

    assert [t.text for t in turns] == [
        "Planning first.",
        "Done.",
        "Planning first.",
        "Done.",
        "Planning first.",
    ]
    assert turns[2].tool_calls[0].call_id == "scripted-2-0"


async def test_error_entries_fail_the_given_number_of_attempts_then_the_turn_plays() -> None:
    script = [
        {
            "error": {"message": "overloaded", "retryable": True, "signature": "scripted:overloaded"},
            "times": 2,
        },
        {"error": {"message": "bad key", "retryable": False, "signature": "scripted:auth"}},
        {"text": "made it"},
    ]
    scripted = brain({"turns": script})

    failures = []
    for _ in range(3):
        with pytest.raises(BrainError) as caught:
            await scripted.think([GOAL], [])
        failures.append((str(caught.value), caught.value.retryable, caught.value.signature))
    # Human guidance after an escalation adds a user message; the script moves on regardless.
    turn = await scripted.think([GOAL, Message(role="user", text="try again")], [])

    assert failures == [
        ("overloaded", True, "scripted:overloaded"),
        ("overloaded", True, "scripted:overloaded"),
        ("bad key", False, "scripted:auth"),
    ]
    assert turn.text == "made it"


async def test_errors_after_the_last_turn_come_before_the_exhaustion_error() -> None:
    scripted = brain({"turns": [{"text": "one"}, {"error": {"signature": "scripted:late"}}]})
    first = await scripted.think([GOAL], [])
    conversation = after([GOAL], first)

    with pytest.raises(BrainError) as late:
        await scripted.think(conversation, [])
    with pytest.raises(BrainError) as exhausted:
        await scripted.think(conversation, [])

    assert (late.value.signature, late.value.retryable) == ("scripted:late", True)
    assert exhausted.value.signature == "scripted:script_exhausted"


async def test_turns_can_come_from_a_file_in_the_turns_directory(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text(json.dumps(TWO_TURNS), encoding="utf-8")

    turn = await brain({"turns_file": "demo.json"}, turns_dir=str(tmp_path)).think([GOAL], [])

    assert turn.text == "Planning first."


@pytest.mark.parametrize(
    ("name", "turns_dir", "message"),
    [
        ("demo.json", "", "turns files are disabled"),
        ("../outside.json", "inside", "inside the scripted turns directory"),
        ("missing.json", "inside", "cannot read 'missing.json'"),
        ("broken.json", "inside", "not valid JSON"),
    ],
)
def test_turns_files_are_confined_and_checked(
    tmp_path: Path, name: str, turns_dir: str, message: str
) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "outside.json").write_text(json.dumps(TWO_TURNS), encoding="utf-8")
    (tmp_path / "inside" / "broken.json").write_text("[{", encoding="utf-8")

    with pytest.raises(PluginConfigError, match=message) as caught:
        brain({"turns_file": name}, turns_dir=str(tmp_path / turns_dir) if turns_dir else "")

    assert caught.value.field == "agent.config.turns_file"


def test_numbers_from_a_protobuf_struct_arrive_as_floats_and_are_accepted() -> None:
    scripted = brain({"turns": [{"usage": {"input_tokens": 1000.0, "output_tokens": 2.0}}], "loop": False})

    assert scripted is not None


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "agent.config.turns"),
        ({"turns": [], "turns_file": "x.json"}, "agent.config.turns"),
        ({"turns": "nope"}, "agent.config.turns"),
        ({"turns": []}, "agent.config.turns"),
        ({"turns": [{"text": "x"}], "lop": True}, "agent.config.lop"),
        ({"turns": [{"text": "x"}], "loop": "yes"}, "agent.config.loop"),
        ({"turns": [{"text": 3}]}, "agent.config.turns[0].text"),
        ({"turns": [{"txt": "x"}]}, "agent.config.turns[0].txt"),
        ({"turns": [{"usage": {"input_tokens": 1.5}}]}, "agent.config.turns[0].usage.input_tokens"),
        ({"turns": [{"usage": {"input_tokens": -1}}]}, "agent.config.turns[0].usage.input_tokens"),
        ({"turns": [{"usage": {"output_tokens": True}}]}, "agent.config.turns[0].usage.output_tokens"),
        ({"turns": [{"stop_reason": "done"}]}, "agent.config.turns[0].stop_reason"),
        ({"turns": [{"tool_calls": [{"input": {}}]}]}, "agent.config.turns[0].tool_calls[0].name"),
        (
            {"turns": [{"tool_calls": [{"name": "n", "input": []}]}]},
            "agent.config.turns[0].tool_calls[0].input",
        ),
        (
            {"turns": [{"tool_calls": [{"name": "a", "call_id": "c"}, {"name": "b", "call_id": "c"}]}]},
            "agent.config.turns[0].tool_calls",
        ),
        ({"turns": [{"text": "x"}, {"error": {}, "times": 0}]}, "agent.config.turns[1].times"),
        ({"turns": [{"error": {"retryable": "no"}}, {"text": "x"}]}, "agent.config.turns[0].error.retryable"),
        ({"turns": [{"error": {}, "text": "x"}]}, "agent.config.turns[0].text"),
        ({"turns": [{"error": {}}]}, "agent.config.turns"),
        ({"turns": [{"text": "x"}, {"error": {}}], "loop": True}, "agent.config.turns"),
    ],
)
def test_bad_scripts_are_rejected_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginConfigError) as caught:
        brain(config)

    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    # The validation step SubmitJob runs finds the same field without building a brain.
    with pytest.raises(PluginConfigError) as checked:
        ScriptedBrainFactory("").validate(AgentSpec(brain="scripted", config=config))
    assert checked.value.field == field


def test_validation_checks_a_turns_file_by_name_and_reads_it_only_when_building(tmp_path: Path) -> None:
    factory = ScriptedBrainFactory(str(tmp_path))
    later = AgentSpec(brain="scripted", config={"turns_file": "written-later.json"})
    factory.validate(later)  # not read: the file need not exist yet
    with pytest.raises(PluginConfigError, match="cannot read"):
        factory(later)
    (tmp_path / "written-later.json").write_text(json.dumps(TWO_TURNS))
    assert factory(later) is not None

    for name in ("../outside.json", "/etc/passwd", "a/../../b.json"):
        with pytest.raises(PluginConfigError, match="inside the scripted turns directory"):
            factory.validate(AgentSpec(brain="scripted", config={"turns_file": name}))


async def test_a_growing_conversation_is_counted_incrementally_and_any_other_one_afresh() -> None:
    scripted = brain({"turns": [{"text": f"turn {n}"} for n in range(4)], "loop": True})
    conversation = [GOAL]
    for n in range(6):  # the loop appends to one list, as the executor does
        turn = await scripted.think(conversation, [])
        assert turn.text == f"turn {n % 4}"
        conversation.append(Message(role="assistant", text=turn.text))
        conversation.append(Message(role="tool", text="ok"))
    # A shorter or different conversation (a resumed checkpoint) is counted from the start.
    assert (await scripted.think(conversation[:3], [])).text == "turn 1"
    assert (await scripted.think([GOAL, *conversation[5:9]], [])).text == "turn 2"
    assert (await scripted.think([GOAL], [])).text == "turn 0"
