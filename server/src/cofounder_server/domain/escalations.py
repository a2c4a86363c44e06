"""Escalations: the question a stuck agent puts to a human (:class:`Escalation`, with its
status, trigger, options and who decided), and the rules around it: which tool errors are
worth retrying, how failures are fingerprinted and counted, what a human may answer, and
what the agent is told about the answer.

Pure functions and values: the executor and the escalation service apply them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cofounder_server.domain.errors import FieldViolation, InvalidArgument


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

    @property
    def is_pending(self) -> bool:
        """Whether the agent still waits for this escalation's answer."""
        return self.status is EscalationStatus.PENDING


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


def check_decision(escalation: Escalation, decision: str) -> None:
    """Raise ``InvalidArgument`` (on ``decision``, listing the allowed values) unless
    ``decision`` is one of the escalation's option values."""
    allowed = [option.value for option in escalation.options]
    if decision not in allowed:
        rule = f"must be one of the escalation's option values: {', '.join(allowed)}"
        raise InvalidArgument([FieldViolation("decision", rule)])


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


def delivered_text(escalation: Escalation) -> str:
    """The tool result the agent receives for a decided escalation. It says who decided:
    a deadline is never presented as a person's choice."""
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
    if escalation.decision_source is DecisionSource.SERVICE:
        who = f"service {escalation.resolved_via_service} acting for {escalation.resolved_by}"
    else:
        who = escalation.resolved_by or "a person"
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
