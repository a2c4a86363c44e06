"""Tool approvals: which tool calls a person approves before they run, how one call is
named (canonical JSON arguments and their SHA-256 digest), and what the agent is told.

Also the JSON Schema checks shared by edited tool arguments and by answers that must
match a schema (:func:`schema_violation`): one machinery, one wording of the failing path.

Pure functions and values: the API checks policies with them, the store checks resolves,
the executor asks and reports.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError

from cofounder_server.domain.errors import FieldViolation, InvalidArgument

APPROVE = "approve"
"""Run this call (with the arguments as given, or as edited)."""
APPROVE_FOR_JOB = "approve_for_job"
"""Run this call, and every later call of the same tool in this job without asking."""
REJECT = "reject"
"""Do not run this call; the guidance is the agent's message."""
APPROVING = frozenset({APPROVE, APPROVE_FOR_JOB})

NEVER_NEEDS_APPROVAL = frozenset({"ask_human"})
"""Tools that already ask a person: they never wait for an approval."""

MAX_POLICY_TOOLS = 100
MAX_PATTERN_CHARS = 128
MAX_APPROVAL_DEADLINE_SECONDS = 30 * 86_400
MAX_ARGUMENTS_CHARS = 256 * 1024
"""Longest edited arguments (JSON text) a resolve may carry."""
_PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")

DIGEST_MISMATCH = "TOOL_CALL_DIGEST_MISMATCH"
"""``ErrorInfo`` reason of an approval that names another digest than the call's."""


class ApprovalTimeout(StrEnum):
    """What a call waiting for approval becomes at its deadline."""

    REJECT = "reject"
    APPROVE = "approve"


@dataclass(frozen=True)
class ToolApprovalPolicy:
    """The tools (names or glob patterns) whose calls wait for a person's approval."""

    tools: tuple[str, ...]
    deadline_seconds: int = 0
    """0: a call waits until someone decides or the job ends."""
    on_timeout: ApprovalTimeout = ApprovalTimeout.REJECT

    def needs_approval(self, tool_name: str, approved_for_job: Sequence[str] = ()) -> bool:
        """Whether a call of ``tool_name`` waits for approval, given the tools already
        approved for the rest of the job."""
        if tool_name in NEVER_NEEDS_APPROVAL or tool_name in approved_for_job:
            return False
        return any(fnmatch.fnmatchcase(tool_name, pattern) for pattern in self.tools)

    @property
    def default_decision(self) -> str:
        """The decision the deadline applies ("" without a deadline)."""
        if not self.deadline_seconds:
            return ""
        return APPROVE if self.on_timeout is ApprovalTimeout.APPROVE else REJECT

    def to_json(self) -> dict[str, Any]:
        """The policy as stored with the job."""
        return {
            "tools": list(self.tools),
            "deadline_seconds": self.deadline_seconds,
            "on_timeout": self.on_timeout.value,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> ToolApprovalPolicy | None:
        """The inverse of :meth:`to_json` (``None`` stays ``None``)."""
        if not value:
            return None
        return cls(
            tools=tuple(str(tool) for tool in value.get("tools", ())),
            deadline_seconds=int(value.get("deadline_seconds", 0)),
            on_timeout=ApprovalTimeout(value.get("on_timeout", ApprovalTimeout.REJECT.value)),
        )


def check_policy(policy: ToolApprovalPolicy, field: str = "agent.tool_approval") -> None:
    """Raise ``InvalidArgument`` naming every bad field of ``policy``."""
    violations: list[FieldViolation] = []
    if not 1 <= len(policy.tools) <= MAX_POLICY_TOOLS:
        violations.append(FieldViolation(f"{field}.tools", f"must list 1 to {MAX_POLICY_TOOLS} tools"))
    for index, pattern in enumerate(policy.tools):
        if len(pattern) > MAX_PATTERN_CHARS or not _PATTERN.fullmatch(pattern):
            violations.append(
                FieldViolation(
                    f"{field}.tools[{index}]",
                    f"must be a tool name or glob pattern of 1 to {MAX_PATTERN_CHARS} characters "
                    "of [A-Za-z0-9_.*?[]!-]",
                )
            )
    if not 0 <= policy.deadline_seconds <= MAX_APPROVAL_DEADLINE_SECONDS:
        violations.append(
            FieldViolation(
                f"{field}.deadline_seconds", f"must be 0 (none) to {MAX_APPROVAL_DEADLINE_SECONDS}"
            )
        )
    if policy.on_timeout is ApprovalTimeout.APPROVE and not policy.deadline_seconds:
        violations.append(
            FieldViolation(f"{field}.on_timeout", "approving on timeout needs deadline_seconds")
        )
    if violations:
        raise InvalidArgument(violations)


_EXACT_INTEGERS = 2**53


def _numbers_as_json_knows_them(value: Any) -> Any:
    """Integral floats as integers: JSON has one number type, and ``2`` and ``2.0`` are one
    argument (a brain's JSON and a protobuf ``Struct`` spell them differently)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INTEGERS:
        return int(value)
    if isinstance(value, dict):
        return {key: _numbers_as_json_knows_them(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers_as_json_knows_them(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text: keys sorted, no insignificant spaces, UTF-8 kept,
    integral numbers without a fraction."""
    return json.dumps(
        _numbers_as_json_knows_them(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def digest_of(arguments_json: str) -> str:
    """The SHA-256 (hex) that names one call's arguments."""
    return hashlib.sha256(arguments_json.encode()).hexdigest()


def is_digest(value: str) -> bool:
    """Whether ``value`` has the form of a digest (64 lower-case hex digits)."""
    return _DIGEST.fullmatch(value) is not None


def _path(error: ValidationError) -> str:
    text = "$"
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def schema_violation(schema: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with ``value`` against the JSON Schema ``schema``, starting with the
    failing path (``$.items[2].name: ...``); ``None`` when it matches."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"{_path(error)}: {error.message}"


def schema_problem(schema: Any) -> str | None:
    """What makes ``schema`` not a usable JSON Schema; ``None`` when it is one."""
    if not isinstance(schema, Mapping):
        return "must be a JSON Schema object"
    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except SchemaError as error:
        return f"is not a valid JSON Schema: {error.message}"
    return None


def parse_json(text: str, field: str) -> Any:
    """``text`` parsed as JSON, or ``InvalidArgument`` on ``field``."""
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidArgument([FieldViolation(field, f"must be JSON text: {error}")]) from error


def check_edited_arguments(
    edited_json: str, input_schema_json: str, field: str = "edited_arguments_json"
) -> str:
    """The edited arguments as canonical JSON, once they are a JSON object matching the tool's
    input schema; ``InvalidArgument`` on ``field`` naming the failing path otherwise."""
    if len(edited_json) > MAX_ARGUMENTS_CHARS:
        raise InvalidArgument([FieldViolation(field, f"must be at most {MAX_ARGUMENTS_CHARS} characters")])
    edited = parse_json(edited_json, field)
    if not isinstance(edited, dict):
        raise InvalidArgument([FieldViolation(field, "must be a JSON object")])
    schema = json.loads(input_schema_json) if input_schema_json else {"type": "object"}
    problem = schema_violation(schema, edited)
    if problem is not None:
        raise InvalidArgument([FieldViolation(field, f"does not match the tool's input schema at {problem}")])
    return canonical_json(edited)


def edits_between(original_json: str, edited_json: str) -> list[str]:
    """What an edit changed, one line per changed field: ``path: old -> new``, ``path: added
    new``, ``path: removed (was old)``."""
    if not edited_json:
        return []
    lines: list[str] = []
    _diff(json.loads(original_json or "{}"), json.loads(edited_json), "$", lines)
    return lines


def _diff(old: Any, new: Any, path: str, lines: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}"
            if key not in new:
                lines.append(f"{where}: removed (was {canonical_json(old[key])})")
            elif key not in old:
                lines.append(f"{where}: added {canonical_json(new[key])}")
            else:
                _diff(old[key], new[key], where, lines)
    elif old != new or type(old) is not type(new):
        lines.append(f"{path}: {canonical_json(old)} -> {canonical_json(new)}")
