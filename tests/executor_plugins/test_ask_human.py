"""The ask_human tool: a well-formed question asks a person; a malformed one goes back to
the model as an error it can correct."""

from __future__ import annotations

from typing import Any

from cofounder_server.domain.escalations import EscalationOption, Question
from cofounder_server.executor.plugins import ToolContext, ToolResult
from cofounder_server.executor.tools.ask_human import AskHumanTool


async def _nothing(*_: Any) -> None:
    return None


async def run(tool_input: dict[str, Any]) -> ToolResult:
    context = ToolContext(job_id="job-1", iteration=1, open_phase=_nothing, close_phase=_nothing)
    return await AskHumanTool().run(tool_input, context)


async def test_a_question_asks_a_person() -> None:
    result = await run(
        {
            "question": "Deploy to production?",
            "options": [{"value": "yes", "label": "Deploy"}, {"value": "no"}],
            "recommended": "no",
            "deadline_seconds": 600,
            "default": "no",
        }
    )
    assert not result.is_error
    assert result.question == Question(
        "Deploy to production?",
        (EscalationOption("yes", "Deploy"), EscalationOption("no")),
        recommended="no",
        deadline_seconds=600.0,
        default="no",
    )


async def test_a_malformed_question_is_an_error_for_the_model_not_a_person() -> None:
    missing = await run({"options": [{"value": "yes"}]})
    unknown = await run({"question": "q", "options": [{"value": "yes"}], "urgency": "high"})
    for result in (missing, unknown):
        assert result.is_error
        assert result.question is None
        assert result.error_type == ""  # feedback for the model: neither retried nor escalated
    assert "`question`" in missing.content
    assert "'urgency'" in unknown.content


def test_the_spec_requires_a_question_and_options() -> None:
    spec = AskHumanTool().spec
    assert spec.name == "ask_human"
    assert spec.input_schema["required"] == ["question", "options"]
