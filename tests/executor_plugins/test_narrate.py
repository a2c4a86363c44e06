"""The narrate tool: acknowledges progress text, opens and closes phases, reports bad input."""

from __future__ import annotations

from typing import Any

import pytest

from cofounder_server.executor.plugins import ToolContext
from cofounder_server.executor.tools.narrate import NarrateTool


class PhaseRecorder:
    """A ToolContext whose phase callbacks record what they were asked to do."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def open_phase(self, name: str) -> None:
        self.calls.append(f"open {name}")

    async def close_phase(self) -> None:
        self.calls.append("close")

    def context(self) -> ToolContext:
        return ToolContext(
            job_id="job-1", iteration=3, open_phase=self.open_phase, close_phase=self.close_phase
        )


async def run(tool_input: dict[str, Any]) -> tuple[str, bool, list[str]]:
    recorder = PhaseRecorder()
    result = await NarrateTool().run(tool_input, recorder.context())
    return result.content, result.is_error, recorder.calls


def test_the_spec_names_the_tool_and_requires_text() -> None:
    spec = NarrateTool().spec

    assert spec.name == "narrate"
    assert spec.input_schema["required"] == ["text"]


async def test_plain_narration_is_acknowledged_without_touching_phases() -> None:
    assert await run({"text": "Reading the docs"}) == ("Noted.", False, [])


async def test_a_phase_opens_and_phase_done_closes_before_anything_opens() -> None:
    assert await run({"text": "Planning", "phase": " planning "}) == (
        "Noted. Phase 'planning' started.",
        False,
        ["open planning"],
    )
    assert await run({"text": "Planned", "phase_done": True}) == ("Noted. Phase closed.", False, ["close"])
    assert await run(
        {
            "text": "Building",
            "phase": "build",
            "phase_done": True,
        }
    ) == (
        "Noted. Phase closed. Phase 'build' started.",
        False,
        ["close", "open build"],
    )
    assert await run({"text": "x", "phase": None}) == ("Noted.", False, [])


@pytest.mark.parametrize(
    ("tool_input", "message"),
    [
        ({}, "`text` is required"),
        ({"text": 5}, "`text` is required"),
        ({"text": "x", "phase": ""}, "`phase` must be a non-empty string"),
        ({"text": "x", "phase": 3}, "`phase` must be a non-empty string"),
        ({"text": "x", "phase": "p" * 201}, "at most 200 characters"),
        ({"text": "x", "phase_done": "yes"}, "`phase_done` must be true or false"),
        ({"text": "x", "stage": "y"}, "unknown input field 'stage'"),
    ],
)
async def test_bad_input_is_an_error_result_and_changes_no_phase(
    tool_input: dict[str, Any], message: str
) -> None:
    content, is_error, calls = await run(tool_input)

    assert is_error
    assert message in content
    assert calls == []
