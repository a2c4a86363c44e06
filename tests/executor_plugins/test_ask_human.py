"""The ask_human tool: a well-formed question asks a person; a malformed one goes back to
the model as an error it can correct."""

from __future__ import annotations

import json
from typing import Any

from cofounder_server.domain.escalations import MAX_ANSWER_CHARS, AnswerKind, EscalationOption, Question
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


def test_the_spec_requires_only_a_question() -> None:
    spec = AskHumanTool().spec
    assert spec.name == "ask_human"
    assert spec.input_schema["required"] == ["question"]
    assert {"answer_schema", "max_answer_chars"} <= set(spec.input_schema["properties"])


async def test_without_options_it_asks_for_free_text_with_a_length_limit() -> None:
    default = await run({"question": "What should the release notes say?"})
    limited = await run({"question": "A title?", "max_answer_chars": 80, "deadline_seconds": 60})
    assert default.question == Question(
        "What should the release notes say?",
        (),
        answer_kind=AnswerKind.TEXT,
        answer_max_chars=MAX_ANSWER_CHARS,
    )
    assert limited.question == Question(
        "A title?", (), deadline_seconds=60.0, answer_kind=AnswerKind.TEXT, answer_max_chars=80
    )


async def test_with_a_schema_it_asks_for_a_value_matching_it() -> None:
    schema = {"type": "object", "properties": {"replicas": {"type": "integer"}}, "required": ["replicas"]}
    result = await run({"question": "How many replicas?", "answer_schema": schema})
    assert result.question is not None
    assert result.question.answer_kind is AnswerKind.VALUE
    assert json.loads(result.question.answer_schema_json) == schema


async def test_a_bad_open_question_goes_back_to_the_model() -> None:
    cases = {
        "`max_answer_chars`": {"question": "q", "max_answer_chars": 0},
        "`answer_schema` is not a valid JSON Schema": {"question": "q", "answer_schema": {"type": "nope"}},
        "`answer_schema` must be a JSON Schema object": {"question": "q", "answer_schema": "int"},
        "need `options`": {"question": "q", "default": "x", "deadline_seconds": 5},
        "are for questions without `options`": {
            "question": "q",
            "options": [{"value": "a"}],
            "answer_schema": {"type": "string"},
        },
        "not with `answer_schema`": {"question": "q", "answer_schema": {}, "max_answer_chars": 5},
    }
    for expected, tool_input in cases.items():
        result = await run(tool_input)
        assert result.is_error, tool_input
        assert result.question is None
        assert expected in result.content, (expected, result.content)
