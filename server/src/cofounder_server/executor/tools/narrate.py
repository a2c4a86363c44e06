"""The ``narrate`` tool: the agent says what it is doing, and marks phases of its work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cofounder_server.executor.plugins import ToolContext, ToolResult, ToolSpec

MAX_PHASE_NAME = 200

_SPEC = ToolSpec(
    name="narrate",
    description=(
        "Tell the people watching this job what you are doing, in a sentence or two. Give "
        "`phase` to start a named phase of the work (this ends the phase before it); set "
        "`phase_done` to end the current phase without starting another."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "Progress in plain words."},
            "phase": {
                "type": ["string", "null"],
                "description": "Name of the phase that starts now, e.g. 'planning'.",
                "maxLength": MAX_PHASE_NAME,
            },
            "phase_done": {"type": "boolean", "description": "The current phase is finished."},
        },
        "required": ["text"],
        "additionalProperties": False,
    },
)


class NarrateTool:
    """Progress text for watchers, plus ``gsd.phase.started`` / ``gsd.phase.completed``.

    With ``phase_done`` the open phase is closed first; with ``phase`` a new one is then
    opened (which closes any phase still open, so ``phase`` alone moves to the next phase).
    """

    @property
    def spec(self) -> ToolSpec:
        """The ``narrate`` spec."""
        return _SPEC

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Validate the input, then close and/or open phases as asked."""
        text = tool_input.get("text")
        phase = tool_input.get("phase")
        phase_done = tool_input.get("phase_done", False)
        unknown = sorted(set(tool_input) - {"text", "phase", "phase_done"})
        # Problems go back to the model as error results it can correct on its next turn.
        if unknown:
            return ToolResult(f"unknown input field {unknown[0]!r}", is_error=True)
        if not isinstance(text, str):
            return ToolResult("`text` is required and must be a string", is_error=True)
        if phase is not None and (not isinstance(phase, str) or not phase.strip()):
            return ToolResult("`phase` must be a non-empty string or null", is_error=True)
        if isinstance(phase, str) and len(phase) > MAX_PHASE_NAME:
            return ToolResult(f"`phase` must be at most {MAX_PHASE_NAME} characters", is_error=True)
        if not isinstance(phase_done, bool):
            return ToolResult("`phase_done` must be true or false", is_error=True)
        notes = ["Noted."]
        if phase_done:
            await context.close_phase()
            notes.append("Phase closed.")
        if phase is not None:
            await context.open_phase(phase.strip())
            notes.append(f"Phase {phase.strip()!r} started.")
        return ToolResult(" ".join(notes))
