"""The ``ask_human`` tool: the agent asks the job's owner a question and waits for the answer.

The question becomes an escalation (problem, options, recommended option, optional deadline
and default; or, without options, a free-text answer or a JSON value matching a schema).
The agent waits, holding nothing, until someone resolves it or the deadline passes; the
answer, saying who or what decided, is the call's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cofounder_server.domain.escalations import (
    MAX_ANSWER_CHARS,
    MAX_DEADLINE,
    MAX_OPTION_VALUE,
    MAX_OPTIONS,
    MAX_QUESTION,
    parse_question,
)
from cofounder_server.executor.plugins import ToolContext, ToolResult, ToolSpec

_SPEC = ToolSpec(
    name="ask_human",
    description=(
        "Ask the person responsible for this job to decide something you cannot or should not "
        "decide alone (a missing credential, an irreversible or costly step, an ambiguous goal). "
        "Offer the choices as `options`; say which you recommend. Without `options` the person "
        "answers in free text (up to `max_answer_chars`), or, with `answer_schema` (a JSON "
        "Schema), with a JSON value matching it. You wait until someone answers; the answer names "
        "who decided. With `deadline_seconds`, nobody answering by then applies `default` (an "
        "option value) if you gave one, and otherwise you are told that nobody answered."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "question": {
                "type": "string",
                "description": "The problem and the decision needed, in plain words.",
                "maxLength": MAX_QUESTION,
            },
            "options": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_OPTIONS,
                "items": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "string", "maxLength": MAX_OPTION_VALUE},
                        "label": {"type": "string"},
                        "description": {"type": "string", "description": "What you will do if chosen."},
                    },
                    "required": ["value"],
                    "additionalProperties": False,
                },
            },
            "answer_schema": {
                "type": "object",
                "description": "Without `options`: a JSON Schema the answer must match.",
            },
            "max_answer_chars": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_ANSWER_CHARS,
                "description": "Without `options`: the longest free-text answer (the default is the most).",
            },
            "recommended": {"type": "string", "description": "The option value you recommend."},
            "deadline_seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_DEADLINE.total_seconds(),
                "description": "How long to wait for an answer; omit to wait until answered.",
            },
            "default": {
                "type": "string",
                "description": "The option value applied if nobody answers by the deadline.",
            },
        },
        "required": ["question"],
        "additionalProperties": False,
    },
)

_KNOWN = frozenset(_SPEC.input_schema["properties"])


class AskHumanTool:
    """Turns a well-formed question into an escalation; a malformed one is an error result
    the model can correct (it never reaches a person)."""

    @property
    def spec(self) -> ToolSpec:
        """The ``ask_human`` spec."""
        return _SPEC

    async def run(self, tool_input: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Check the question; the executor raises the escalation and waits."""
        unknown = sorted(set(tool_input) - _KNOWN)
        if unknown:
            return ToolResult(f"unknown input field {unknown[0]!r}", is_error=True)
        question = parse_question(tool_input)
        if isinstance(question, str):
            return ToolResult(question, is_error=True)
        return ToolResult("", question=question)
