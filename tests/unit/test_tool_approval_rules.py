"""The rules of tool approvals and of answers beyond options: which calls need approval, how
a call is named (canonical JSON and its digest), what a resolve may say, and what the agent
is told."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime

import pytest

from cofounder_server.domain.approvals import (
    ApprovalTimeout,
    ToolApprovalPolicy,
    canonical_json,
    check_policy,
    digest_of,
    edits_between,
    schema_violation,
)
from cofounder_server.domain.errors import FailedPrecondition, InvalidArgument
from cofounder_server.domain.escalations import (
    AnswerKind,
    DecisionSource,
    Escalation,
    EscalationOption,
    EscalationStatus,
    EscalationTrigger,
    Resolution,
    check_resolution,
    delivered_text,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ARGUMENTS = canonical_json({"key": "a", "amount": 1})
SCHEMA = canonical_json(
    {
        "type": "object",
        "properties": {"key": {"type": "string"}, "amount": {"type": "integer", "minimum": 1}},
        "required": ["key"],
        "additionalProperties": False,
    }
)
APPROVAL = Escalation(
    escalation_id="e",
    job_id="j",
    owner_id="alice",
    status=EscalationStatus.PENDING,
    trigger=EscalationTrigger.TOOL_APPROVAL,
    problem="The agent wants to run counter",
    create_time=NOW,
    tool_call_id="c1",
    tool_name="counter",
    arguments_json=ARGUMENTS,
    arguments_digest=digest_of(ARGUMENTS),
    input_schema_json=SCHEMA,
    options=tuple(EscalationOption(value) for value in ("approve", "approve_for_job", "reject")),
)


def test_a_policy_matches_names_and_globs_but_never_ask_human_or_tools_approved_for_the_job() -> None:
    policy = ToolApprovalPolicy(("deploy", "db_*", "*"))
    assert policy.needs_approval("deploy")
    assert policy.needs_approval("db_migrate")
    assert not policy.needs_approval("ask_human")
    assert not policy.needs_approval("deploy", approved_for_job=["deploy"])
    narrow = ToolApprovalPolicy(("db_?",))
    assert narrow.needs_approval("db_x")
    assert not narrow.needs_approval("db_xy")
    assert not narrow.needs_approval("DB_X")  # case matters: tool names are exact


def test_the_deadline_decides_reject_unless_the_policy_says_approve() -> None:
    assert ToolApprovalPolicy(("x",)).default_decision == ""
    assert ToolApprovalPolicy(("x",), 60).default_decision == "reject"
    assert ToolApprovalPolicy(("x",), 60, ApprovalTimeout.APPROVE).default_decision == "approve"
    policy = ToolApprovalPolicy(("x", "y*"), 60, ApprovalTimeout.APPROVE)
    assert ToolApprovalPolicy.from_json(policy.to_json()) == policy
    assert ToolApprovalPolicy.from_json(None) is None


def test_a_bad_policy_names_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_policy(ToolApprovalPolicy(("ok", "not ok"), -1))
    assert [v.field for v in raised.value.violations] == [
        "agent.tool_approval.tools[1]",
        "agent.tool_approval.deadline_seconds",
    ]
    with pytest.raises(InvalidArgument) as raised:
        check_policy(ToolApprovalPolicy(("ok",), 0, ApprovalTimeout.APPROVE))
    assert [v.field for v in raised.value.violations] == ["agent.tool_approval.on_timeout"]
    with pytest.raises(InvalidArgument):
        check_policy(ToolApprovalPolicy(()))
    check_policy(ToolApprovalPolicy(("deploy_[ab]*", "x.y-z"), 30))


def test_canonical_json_and_its_digest_do_not_depend_on_key_order_or_number_spelling() -> None:
    assert canonical_json({"b": 1.0, "a": [2.0, 2.5], "é": "ü"}) == '{"a":[2,2.5],"b":1,"é":"ü"}'
    assert digest_of('{"a":1}') == hashlib.sha256(b'{"a":1}').hexdigest()


def test_edits_name_each_changed_path() -> None:
    assert edits_between('{"a":1,"b":{"c":2,"d":3}}', '{"a":1,"b":{"c":4},"e":true}') == [
        "$.b.c: 2 -> 4",
        "$.b.d: removed (was 3)",
        "$.e: added true",
    ]
    assert edits_between('{"a":1}', "") == []


def test_schema_violations_name_the_failing_path() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}}
    assert schema_violation(schema, {"items": [1, "two"]}) == "$.items[1]: 'two' is not of type 'integer'"
    assert schema_violation(schema, {"items": [1]}) is None


def test_an_approval_needs_the_calls_digest_and_edits_that_match_the_schema() -> None:
    digest = APPROVAL.arguments_digest
    assert check_resolution(APPROVAL, Resolution("approve", arguments_digest=digest)) == ""
    assert check_resolution(APPROVAL, Resolution("reject")) == ""
    edited = check_resolution(
        APPROVAL,
        Resolution("approve", arguments_digest=digest, edited_arguments_json='{"key":"a","amount":3}'),
    )
    assert edited == '{"amount":3,"key":"a"}'
    # An "edit" that changes nothing is no edit.
    same = Resolution("approve", arguments_digest=digest, edited_arguments_json='{ "amount": 1, "key": "a" }')
    assert check_resolution(APPROVAL, same) == ""
    with pytest.raises(FailedPrecondition) as stale:
        check_resolution(APPROVAL, Resolution("approve", arguments_digest="0" * 64))
    assert stale.value.reason == "TOOL_CALL_DIGEST_MISMATCH"
    for resolution, field in (
        (Resolution("approve"), "arguments_digest"),
        (Resolution("approve", arguments_digest="xyz"), "arguments_digest"),
        (
            Resolution("approve", arguments_digest=digest, edited_arguments_json='{"key":1}'),
            "edited_arguments_json",
        ),
        (Resolution("reject", edited_arguments_json='{"key":"b"}'), "edited_arguments_json"),
        (Resolution("maybe"), "decision"),
        (Resolution("approve", answer="yes"), "answer"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            check_resolution(APPROVAL, resolution)
        assert [v.field for v in raised.value.violations] == [field], resolution


def test_answers_beyond_options_are_checked_by_kind() -> None:
    text = dataclasses.replace(
        APPROVAL, trigger=EscalationTrigger.AGENT_QUESTION, answer_kind=AnswerKind.TEXT, answer_max_chars=5
    )
    check_resolution(text, Resolution(answer="hello"))
    value = dataclasses.replace(
        text, answer_kind=AnswerKind.VALUE, answer_schema_json='{"type":"object","required":["n"]}'
    )
    check_resolution(value, Resolution(answer='{"n": 1}'))
    for escalation, resolution, field, words in (
        (text, Resolution(answer="too long"), "answer", "at most 5"),
        (text, Resolution(answer="  "), "answer", "required"),
        (text, Resolution("pg"), "decision", "takes an `answer`"),
        (value, Resolution(answer="{oops"), "answer", "JSON"),
        (value, Resolution(answer="{}"), "answer", "at $: 'n' is a required property"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            check_resolution(escalation, resolution)
        (violation,) = raised.value.violations
        assert violation.field == field
        assert words in violation.description, violation.description


def test_the_agent_is_told_the_answer_and_who_gave_it() -> None:
    text = dataclasses.replace(
        APPROVAL,
        trigger=EscalationTrigger.AGENT_QUESTION,
        answer_kind=AnswerKind.TEXT,
        status=EscalationStatus.RESOLVED,
        decision_source=DecisionSource.PERSON,
        resolved_by="alice",
        answer="Call it v2",
    )
    assert delivered_text(text) == "Answered by alice:\nCall it v2"
    value = dataclasses.replace(text, answer_kind=AnswerKind.VALUE, answer='{"n":1}')
    assert delivered_text(value) == 'Answered by alice with the value: {"n":1}'
    expired = dataclasses.replace(
        text, status=EscalationStatus.EXPIRED, decision_source=DecisionSource.DEADLINE, resolved_by=""
    )
    assert delivered_text(expired).startswith("Nobody answered by the deadline")
