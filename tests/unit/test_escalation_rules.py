"""Escalation rules: error classes, signatures, retry counts, questions, decisions, wording."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from cofounder_server.domain.errors import InvalidArgument
from cofounder_server.domain.escalations import (
    DecisionSource,
    ErrorClass,
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
    Question,
    Resolution,
    RetryCounts,
    check_resolution,
    classify_error,
    deadline_outcome,
    delivered_text,
    error_signature,
    parse_question,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

ESCALATION = Escalation(
    escalation_id="e",
    job_id="j",
    owner_id="alice",
    status=EscalationStatus.PENDING,
    trigger=EscalationTrigger.AGENT_QUESTION,
    problem="Which database?",
    create_time=NOW,
    options=(EscalationOption("pg", "PostgreSQL"), EscalationOption("sqlite", "SQLite")),
)


@pytest.mark.parametrize(
    ("error_type", "message"),
    [
        ("PermissionError", "cannot write"),
        ("HTTPError", "403 Forbidden"),
        ("", "invalid API key supplied"),
        ("AuthError", "credentials expired"),
        ("", "HTTP 401 from api.example.com"),
    ],
)
def test_permission_and_credential_failures_are_never_retried(error_type: str, message: str) -> None:
    assert classify_error(error_type, message) is ErrorClass.NEVER_RETRY


@pytest.mark.parametrize(("error_type", "message"), [("TimeoutError", "read timed out"), ("", "HTTP 503")])
def test_other_failures_may_be_retried(error_type: str, message: str) -> None:
    assert classify_error(error_type, message) is ErrorClass.RETRYABLE


def test_a_tools_own_verdict_wins() -> None:
    assert classify_error("", "permission denied", retryable=True) is ErrorClass.RETRYABLE
    assert classify_error("", "read timed out", retryable=False) is ErrorClass.NEVER_RETRY


def test_signature_ignores_ids_numbers_quotes_paths_and_case() -> None:
    first = error_signature(
        "fetch", "Timeout", "Request 4f1c2a9e-1111-2222-3333-444455556666 to '/a/b/c.txt' timed out after 30s"
    )
    second = error_signature(
        "fetch", "Timeout", "request 0a0b0c0d-aaaa-bbbb-cccc-ddddeeeeffff to '/x/y.txt'  TIMED OUT after 31s"
    )
    assert first == second
    assert first.startswith("fetch:Timeout:")


def test_signature_tells_tools_types_and_messages_apart() -> None:
    base = error_signature("fetch", "Timeout", "timed out")
    assert base != error_signature("store", "Timeout", "timed out")
    assert base != error_signature("fetch", "OSError", "timed out")
    assert base != error_signature("fetch", "Timeout", "connection refused")


def test_retry_counts_count_per_signature_reset_and_survive_json() -> None:
    counts = RetryCounts()
    assert [counts.failed("a"), counts.failed("a"), counts.failed("b")] == [1, 2, 1]
    restored = RetryCounts.from_json(counts.to_json())
    assert restored.failed("a") == 3
    restored.reset("a")
    assert restored.failed("a") == 1


def test_a_question_is_parsed_with_options_deadline_and_default() -> None:
    parsed = parse_question(
        {
            "question": " Which database? ",
            "options": [
                {"value": "pg", "label": "PostgreSQL", "description": "managed"},
                {"value": "sqlite"},
            ],
            "recommended": "pg",
            "deadline_seconds": 60,
            "default": "sqlite",
        },
    )
    assert parsed == Question(
        "Which database?",
        (EscalationOption("pg", "PostgreSQL", "managed"), EscalationOption("sqlite")),
        "pg",
        60.0,
        "sqlite",
    )
    assert isinstance(parsed, Question)
    assert parsed.deadline(NOW) == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("tool_input", "complaint"),
    [
        ({"options": [{"value": "a"}]}, "`question`"),
        ({"question": "q", "options": []}, "`options`"),
        ({"question": "q", "options": [{"value": "a"}, {"value": "a"}]}, "offered twice"),
        ({"question": "q", "options": [{"value": ""}]}, "`options[0].value`"),
        ({"question": "q", "options": [{"value": "a"}], "recommended": "b"}, "`recommended`"),
        ({"question": "q", "options": [{"value": "a"}], "default": "a"}, "needs `deadline_seconds`"),
        ({"question": "q", "options": [{"value": "a"}], "deadline_seconds": 0}, "positive"),
        ({"question": "q", "options": [{"value": "a"}], "deadline_seconds": True}, "positive"),
    ],
)
def test_a_bad_question_says_what_is_wrong(tool_input: dict[str, object], complaint: str) -> None:
    parsed = parse_question(tool_input)
    assert isinstance(parsed, str)
    assert complaint in parsed


def test_a_decision_must_be_an_option_value() -> None:
    assert check_resolution(ESCALATION, Resolution("pg")) == ""
    with pytest.raises(InvalidArgument) as raised:
        check_resolution(ESCALATION, Resolution("mysql"))
    (violation,) = raised.value.violations
    assert violation.field == "decision"
    assert "pg, sqlite" in violation.description


def test_a_deadline_applies_the_default_or_expires() -> None:
    assert deadline_outcome(dataclasses.replace(ESCALATION, default_option="pg")) == (
        EscalationStatus.RESOLVED,
        "pg",
    )
    assert deadline_outcome(ESCALATION) == (EscalationStatus.EXPIRED, "")


def test_the_agent_is_told_who_decided_and_never_that_a_deadline_was_a_person() -> None:
    person = dataclasses.replace(
        ESCALATION,
        status=EscalationStatus.RESOLVED,
        decision="pg",
        guidance="use the managed one",
        resolved_by="alice",
        decision_source=DecisionSource.PERSON,
    )
    assert delivered_text(person) == "Answered by alice: pg (PostgreSQL).\nGuidance: use the managed one"
    service = dataclasses.replace(
        person, guidance="", decision_source=DecisionSource.SERVICE, resolved_via_service="billing"
    )
    assert delivered_text(service) == "Answered by service billing acting for alice: pg (PostgreSQL)."
    by_default = dataclasses.replace(
        ESCALATION,
        status=EscalationStatus.RESOLVED,
        decision="sqlite",
        decision_source=DecisionSource.DEADLINE,
        default_option="sqlite",
    )
    text = delivered_text(by_default)
    assert text.startswith("No answer by the deadline; the default sqlite (SQLite) was applied.")
    assert "Answered" not in text
    expired = dataclasses.replace(
        ESCALATION, status=EscalationStatus.EXPIRED, decision_source=DecisionSource.DEADLINE
    )
    assert delivered_text(expired).startswith("Nobody answered by the deadline")
