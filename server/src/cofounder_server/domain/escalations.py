"""Escalations: the question a stuck agent puts to a human (:class:`Escalation`, with its
status, trigger, options and who decided), and the rules around it: which tool errors are
worth retrying, how failures are fingerprinted and counted, what a human may answer, and
what the agent is told about the answer.

Pure functions and values: the executor and the escalation service apply them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cofounder_server.domain.approvals import (
    APPROVE_FOR_JOB,
    APPROVING,
    DIGEST_MISMATCH,
    canonical_json,
    check_edited_arguments,
    edits_between,
    is_digest,
    parse_json,
    schema_problem,
    schema_violation,
)
from cofounder_server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument


@dataclass(frozen=True)
class Escalation:
    """A question from a stuck agent to a human, and its answer."""

    escalation_id: str
    job_id: str
    owner_id: str
    status: EscalationStatus
    trigger: EscalationTrigger
    problem: str
    create_time: datetime
    attempts: tuple[str, ...] = ()
    recommended_action: str = ""
    options: tuple[EscalationOption, ...] = ()
    error_signature: str = ""
    resolve_time: datetime | None = None
    decision: str = ""
    guidance: str = ""
    resolved_by: str = ""
    decision_source: DecisionSource | None = None
    resolved_via_service: str = ""
    tool_call_id: str = ""
    tool_name: str = ""
    deadline: datetime | None = None
    default_option: str = ""
    arguments_json: str = ""
    """A tool approval's call arguments as the agent gave them (canonical JSON)."""
    arguments_digest: str = ""
    """SHA-256 of ``arguments_json``: what an approval names."""
    input_schema_json: str = ""
    """A tool approval's tool input schema, which edited arguments must match."""
    approved_arguments_json: str = ""
    """The arguments a reviewer approved instead of the agent's (canonical JSON)."""
    answer_kind: AnswerKind = field(default_factory=lambda: AnswerKind.OPTION)
    answer_schema_json: str = ""
    """The JSON Schema a VALUE answer must match."""
    answer_max_chars: int = 0
    """The longest TEXT answer."""
    answer: str = ""
    """The free-text or JSON answer given (TEXT and VALUE answers)."""

    @property
    def is_pending(self) -> bool:
        """Whether the agent still waits for this escalation's answer."""
        return self.status is EscalationStatus.PENDING

    @property
    def approved(self) -> bool:
        """Whether this is a tool approval that was approved (by a person or the deadline)."""
        return (
            self.trigger is EscalationTrigger.TOOL_APPROVAL
            and self.status is EscalationStatus.RESOLVED
            and self.decision in APPROVING
        )

    @property
    def final_arguments_json(self) -> str:
        """The arguments an approved call runs with: the reviewer's edit, or the agent's."""
        return self.approved_arguments_json or self.arguments_json

    def edits(self) -> list[str]:
        """What a reviewer's edit of the arguments changed, one line per field."""
        return edits_between(self.arguments_json, self.approved_arguments_json)


@dataclass(frozen=True)
class EscalationOption:
    """One choice a human can make to resolve an escalation."""

    value: str
    label: str = ""
    description: str = ""


class EscalationStatus(StrEnum):
    """Where an escalation stands."""

    PENDING = "pending"
    RESOLVED = "resolved"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    """The deadline passed without an answer and without a default option."""


class EscalationTrigger(StrEnum):
    """Why the agent raised an escalation."""

    REPEATED_ERROR = "repeated_error"
    UNRETRYABLE_ERROR = "unretryable_error"
    AGENT_QUESTION = "agent_question"
    TOOL_APPROVAL = "tool_approval"


class AnswerKind(StrEnum):
    """What kind of answer resolves an escalation."""

    OPTION = "option"
    """One of its options."""
    TEXT = "text"
    """Free text of at most ``answer_max_chars``."""
    VALUE = "value"
    """A JSON value matching ``answer_schema_json``."""


class ToolExecutionState(StrEnum):
    """Where an approved tool call's single execution stands (durable: a restart reads it)."""

    APPROVED = "approved"
    """Approved; not started."""
    RUNNING = "running"
    """Started. Found so after a restart: interrupted, and it may or may not have completed."""
    DONE = "done"
    """Finished; its result is kept."""


class DecisionSource(StrEnum):
    """Who or what decided an escalation."""

    PERSON = "person"
    """The job's owner or an operator, in person."""
    SERVICE = "service"
    """A service acting for the owner."""
    DEADLINE = "deadline"
    """Nobody answered by the deadline."""


DEFAULT_MAX_ATTEMPTS = 3
"""Attempts a retryable error signature gets before it escalates."""
DEFAULT_MAX_ESCALATIONS = 5
"""Escalations one job may raise; the next one ends the job instead."""
MAX_OPTIONS = 20
MAX_OPTION_VALUE = 128
MAX_QUESTION = 10_000
MAX_ATTEMPT_TEXT = 1_000
MAX_DEADLINE = timedelta(days=30)
MAX_ANSWER_CHARS = 10_000
"""The longest free-text answer a question may ask for (and its default limit)."""
MAX_ANSWER_SCHEMA_CHARS = 64 * 1024

ALREADY_RESOLVED = "ESCALATION_ALREADY_RESOLVED"
"""``ErrorInfo`` reason of a resolve that comes after the escalation was decided."""


class ErrorClass(StrEnum):
    """Whether trying a failed step again may help."""

    RETRYABLE = "retryable"
    NEVER_RETRY = "never_retry"


# Failures no retry can fix: the caller lacks a right or a credential, or the request is
# refused as such. Matched on the error's type and message, lower-cased.
_NEVER_RETRY = re.compile(
    r"permission|forbidden|unauthori[sz]ed|unauthenticated|access denied|not allowed|"
    r"credential|api[ _-]?key|auth(entication)? failed|invalid token|expired token|"
    r"\b401\b|\b403\b"
)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX = re.compile(r"\b(0x)?[0-9a-f]*\d[0-9a-f]*\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(/[\w.@-]+){2,}/?")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_SPACE = re.compile(r"\s+")
_SIGNATURE_LENGTH = 200


def classify_error(error_type: str, message: str, *, retryable: bool | None = None) -> ErrorClass:
    """How to treat a failed tool call. ``retryable`` is the tool's own verdict, when it gave
    one; otherwise permission and credential failures are never retried, the rest are."""
    if retryable is not None:
        return ErrorClass.RETRYABLE if retryable else ErrorClass.NEVER_RETRY
    text = f"{error_type} {message}".lower()
    return ErrorClass.NEVER_RETRY if _NEVER_RETRY.search(text) else ErrorClass.RETRYABLE


def normalise_message(message: str) -> str:
    """``message`` without what varies between occurrences of the same failure: ids, quoted
    values, paths and numbers become placeholders; case and spacing are folded."""
    text = message.strip().lower()
    text = _UUID.sub("<id>", text)
    text = _QUOTED.sub("<value>", text)
    text = _PATH.sub("<path>", text)
    text = _HEX.sub("<n>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text)[:_SIGNATURE_LENGTH]


def error_signature(tool_name: str, error_type: str, message: str) -> str:
    """The fingerprint retries are counted by: the tool, the error's type and its normalised
    message. Two failures that differ only in ids, numbers or quoted values share it."""
    return f"{tool_name}:{error_type or 'error'}:{normalise_message(message)}"


@dataclass
class RetryCounts:
    """Failed attempts per error signature in one job (saved with the loop's state)."""

    counts: dict[str, int] = field(default_factory=dict)

    def failed(self, signature: str) -> int:
        """Count one more failure of ``signature``; return its attempt number (from 1)."""
        attempt = self.counts.get(signature, 0) + 1
        self.counts[signature] = attempt
        return attempt

    def reset(self, signature: str) -> None:
        """Start counting ``signature`` afresh (its escalation was answered)."""
        self.counts.pop(signature, None)

    def to_json(self) -> dict[str, int]:
        """The counts as JSON."""
        return dict(self.counts)

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> RetryCounts:
        """The inverse of :meth:`to_json`."""
        return cls({str(k): int(v) for k, v in (value or {}).items()})


@dataclass(frozen=True)
class Question:
    """What the agent asks a human through ``ask_human``, checked."""

    question: str
    options: tuple[EscalationOption, ...]
    recommended: str = ""
    deadline_seconds: float | None = None
    """How long to wait for an answer, from when the question is raised."""
    default: str = ""
    answer_kind: AnswerKind = AnswerKind.OPTION
    answer_schema_json: str = ""
    answer_max_chars: int = 0

    def deadline(self, raised: datetime) -> datetime | None:
        """The deadline of the question raised at ``raised``."""
        return None if self.deadline_seconds is None else raised + timedelta(seconds=self.deadline_seconds)


def parse_question(tool_input: Mapping[str, Any]) -> Question | str:
    """The ``ask_human`` input as a :class:`Question`, or what is wrong with it (in words the
    model can act on)."""
    question = tool_input.get("question")
    if not isinstance(question, str) or not question.strip():
        return "`question` is required and must be a non-empty string"
    if len(question) > MAX_QUESTION:
        return f"`question` must be at most {MAX_QUESTION} characters"
    raw_options = tool_input.get("options")
    schema = tool_input.get("answer_schema")
    max_chars = tool_input.get("max_answer_chars")
    if raw_options is None:
        return _open_question(question.strip(), schema, max_chars, tool_input)
    if schema is not None or max_chars is not None:
        return "`answer_schema` and `max_answer_chars` are for questions without `options`"
    if not isinstance(raw_options, list) or not 1 <= len(raw_options) <= MAX_OPTIONS:
        return f"`options` must be a list of 1 to {MAX_OPTIONS} options"
    options: list[EscalationOption] = []
    for index, raw in enumerate(raw_options):
        if not isinstance(raw, Mapping):
            return f"`options[{index}]` must be an object with `value`, `label` and `description`"
        value, label, description = raw.get("value"), raw.get("label", ""), raw.get("description", "")
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_OPTION_VALUE:
            return (
                f"`options[{index}].value` must be a non-empty string of at most "
                f"{MAX_OPTION_VALUE} characters"
            )
        if not isinstance(label, str) or not isinstance(description, str):
            return f"`options[{index}].label` and `.description` must be strings"
        if any(option.value == value for option in options):
            return f"`options[{index}].value` {value!r} is offered twice"
        options.append(EscalationOption(value=value, label=label, description=description))
    values = [option.value for option in options]
    recommended = tool_input.get("recommended", "")
    if recommended and recommended not in values:
        return f"`recommended` must be one of the option values {values}"
    default = tool_input.get("default", "")
    if default and default not in values:
        return f"`default` must be one of the option values {values}"
    deadline: float | None = None
    seconds = tool_input.get("deadline_seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            return "`deadline_seconds` must be a positive number"
        if seconds > MAX_DEADLINE.total_seconds():
            return f"`deadline_seconds` must be at most {int(MAX_DEADLINE.total_seconds())}"
        deadline = float(seconds)
    elif default:
        return "`default` needs `deadline_seconds`: it is applied when nobody answers by then"
    return Question(question.strip(), tuple(options), str(recommended), deadline, str(default))


def _deadline_of(tool_input: Mapping[str, Any]) -> float | str | None:
    seconds = tool_input.get("deadline_seconds")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        return "`deadline_seconds` must be a positive number"
    if seconds > MAX_DEADLINE.total_seconds():
        return f"`deadline_seconds` must be at most {int(MAX_DEADLINE.total_seconds())}"
    return float(seconds)


def _open_question(
    question: str, schema: Any, max_chars: Any, tool_input: Mapping[str, Any]
) -> Question | str:
    """A question answered in free text, or with a value matching ``schema``."""
    if tool_input.get("recommended") or tool_input.get("default"):
        return "`recommended` and `default` name option values: they need `options`"
    deadline = _deadline_of(tool_input)
    if isinstance(deadline, str):
        return deadline
    if schema is not None:
        if max_chars is not None:
            return "`max_answer_chars` is for free-text answers, not with `answer_schema`"
        problem = schema_problem(schema)
        if problem is not None:
            return f"`answer_schema` {problem}"
        schema_json = canonical_json(schema)
        if len(schema_json) > MAX_ANSWER_SCHEMA_CHARS:
            return f"`answer_schema` must be at most {MAX_ANSWER_SCHEMA_CHARS} characters of JSON"
        return Question(question, (), "", deadline, "", AnswerKind.VALUE, schema_json)
    limit = MAX_ANSWER_CHARS if max_chars is None else max_chars
    if isinstance(limit, float) and limit.is_integer():  # JSON has one number type
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ANSWER_CHARS:
        return f"`max_answer_chars` must be an integer from 1 to {MAX_ANSWER_CHARS}"
    return Question(question, (), "", deadline, "", AnswerKind.TEXT, "", limit)


@dataclass(frozen=True)
class Resolution:
    """What a resolve asks for, besides who decides."""

    decision: str = ""
    answer: str = ""
    arguments_digest: str = ""
    edited_arguments_json: str = ""


def check_resolution(escalation: Escalation, resolution: Resolution) -> str:
    """Check a resolve against the escalation; return the edited arguments it approves
    (canonical JSON; "" without an edit). Raises ``InvalidArgument`` naming the field (no
    option, an answer that does not fit, arguments that do not match the tool's schema), and
    ``FailedPrecondition`` (:data:`DIGEST_MISMATCH`) for an approval of another call."""
    if escalation.answer_kind is not AnswerKind.OPTION:
        _check_answer(escalation, resolution)
        return ""
    if resolution.answer:
        raise InvalidArgument([FieldViolation("answer", "this escalation takes one of its options")])
    allowed = [option.value for option in escalation.options]
    if resolution.decision not in allowed:
        rule = f"must be one of the escalation's option values: {', '.join(allowed)}"
        raise InvalidArgument([FieldViolation("decision", rule)])
    approving = escalation.trigger is EscalationTrigger.TOOL_APPROVAL and resolution.decision in APPROVING
    if resolution.edited_arguments_json and not approving:
        raise InvalidArgument(
            [
                FieldViolation(
                    "edited_arguments_json", "only an approval of a tool call takes edited arguments"
                )
            ]
        )
    if not approving:
        return ""
    if not resolution.arguments_digest:
        raise InvalidArgument(
            [FieldViolation("arguments_digest", "is required to approve a tool call: the call's digest")]
        )
    if not is_digest(resolution.arguments_digest):
        raise InvalidArgument([FieldViolation("arguments_digest", "must be 64 lower-case hex digits")])
    edited = ""
    if resolution.edited_arguments_json:
        edited = check_edited_arguments(resolution.edited_arguments_json, escalation.input_schema_json)
    if escalation.is_pending and resolution.arguments_digest != escalation.arguments_digest:
        raise FailedPrecondition(
            DIGEST_MISMATCH,
            f"the digest {resolution.arguments_digest} is not that of the call waiting for approval "
            f"({escalation.arguments_digest}): look at the call again before approving it",
            metadata={
                "escalation_id": escalation.escalation_id,
                "arguments_digest": escalation.arguments_digest,
            },
        )
    return "" if edited == escalation.arguments_json else edited


def _check_answer(escalation: Escalation, resolution: Resolution) -> None:
    """An answer of a question that takes free text or a value, and nothing else."""
    for name in ("decision", "arguments_digest", "edited_arguments_json"):
        if getattr(resolution, name):
            raise InvalidArgument([FieldViolation(name, "this escalation takes an `answer`, not an option")])
    if not resolution.answer.strip():
        raise InvalidArgument([FieldViolation("answer", "is required")])
    if escalation.answer_kind is AnswerKind.TEXT:
        limit = escalation.answer_max_chars or MAX_ANSWER_CHARS
        if len(resolution.answer) > limit:
            raise InvalidArgument([FieldViolation("answer", f"must be at most {limit} characters")])
        return
    value = parse_json(resolution.answer, "answer")
    schema = json.loads(escalation.answer_schema_json) if escalation.answer_schema_json else {}
    problem = schema_violation(schema, value)
    if problem is not None:
        raise InvalidArgument(
            [FieldViolation("answer", f"does not match the question's schema at {problem}")]
        )


def decision_source(*, acting_service: str | None) -> DecisionSource:
    """How a resolve made through the API is recorded: by a service or by a person."""
    return DecisionSource.SERVICE if acting_service else DecisionSource.PERSON


def deadline_outcome(escalation: Escalation) -> tuple[EscalationStatus, str]:
    """What an unanswered escalation becomes at its deadline: RESOLVED with its default
    option as the decision, or EXPIRED with no decision."""
    if escalation.default_option:
        return EscalationStatus.RESOLVED, escalation.default_option
    return EscalationStatus.EXPIRED, ""


def _label(escalation: Escalation, value: str) -> str:
    for option in escalation.options:
        if option.value == value and option.label and option.label != value:
            return f"{value} ({option.label})"
    return value


def decided_by(escalation: Escalation) -> str:
    """Who decided, in words: the person, or the service and whom it acted for."""
    if escalation.decision_source is DecisionSource.SERVICE:
        return f"service {escalation.resolved_via_service} acting for {escalation.resolved_by}"
    return escalation.resolved_by or "a person"


def approval_text(escalation: Escalation) -> str:
    """What the agent is told of a decided tool approval, before any result of the call."""
    tool = escalation.tool_name
    deadline = escalation.decision_source is DecisionSource.DEADLINE
    if not escalation.approved:
        if deadline:
            return (
                f"Nobody answered the request to approve this call of {tool} by its deadline, "
                "so it was rejected: the tool did not run."
            )
        text = f"Rejected by {decided_by(escalation)}: this call of {tool} did not run."
        if escalation.guidance:
            text += f"\nReviewer's message: {escalation.guidance}"
        return text
    who = (
        "Nobody answered by the deadline; the policy approves on timeout"
        if deadline
        else (f"Approved by {decided_by(escalation)}")
    )
    text = f"{who}: this call of {tool} ran"
    edits = escalation.edits()
    if edits:
        text += " with EDITED arguments, not yours. What the reviewer changed:\n" + "\n".join(
            f"- {line}" for line in edits
        )
        text += f"\nThe call ran with {escalation.final_arguments_json}."
    else:
        text += " as you asked."
    if escalation.decision == APPROVE_FOR_JOB:
        text += f"\n{tool} is approved for the rest of the job."
    if escalation.guidance:
        text += f"\nReviewer's message: {escalation.guidance}"
    return text


def delivered_text(escalation: Escalation) -> str:
    """The tool result the agent receives for a decided escalation. It says who decided:
    a deadline is never presented as a person's choice."""
    if escalation.trigger is EscalationTrigger.TOOL_APPROVAL:
        return approval_text(escalation)
    if escalation.decision_source is DecisionSource.DEADLINE:
        if escalation.status is EscalationStatus.EXPIRED:
            return (
                "Nobody answered by the deadline and there was no default option: no decision "
                "was made. Continue with what you can do without one, or end your turn."
            )
        return (
            f"No answer by the deadline; the default {_label(escalation, escalation.decision)} "
            "was applied. Nobody chose it."
        )
    who = decided_by(escalation)
    if escalation.answer_kind is AnswerKind.TEXT:
        text = f"Answered by {who}:\n{escalation.answer}"
    elif escalation.answer_kind is AnswerKind.VALUE:
        text = f"Answered by {who} with the value: {escalation.answer}"
    else:
        text = f"Answered by {who}: {_label(escalation, escalation.decision)}."
    if escalation.guidance:
        text += f"\nGuidance: {escalation.guidance}"
    return text


def attempts_text(messages: Sequence[str]) -> tuple[str, ...]:
    """What was tried, one entry per failed attempt, each cut to a readable length."""
    return tuple(
        message if len(message) <= MAX_ATTEMPT_TEXT else message[: MAX_ATTEMPT_TEXT - 1] + "…"
        for message in messages
    )
