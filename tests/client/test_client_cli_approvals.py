"""Tool approvals and open questions in the ``cofounder`` command line: the interactive
resolve, ``approve`` and ``reject``, the text people read, and the submit options of a tool
approval policy (against the fake server)."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from client_fakes import Harness, new_escalation, new_job
from google.protobuf import json_format
from test_client_cli import json_lines, run_cli
from test_client_cli_terminal import _TypedInput

from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2
from cofounder_client import cli
from cofounder_client.terminal import escalation_watch_lines, question_lines, schema_summary

DIGEST = "d" * 64
ARGUMENTS = '{"replicas":4,"service":"web"}'
APPROVAL_OPTIONS = [
    escalation_pb2.EscalationOption(value=v) for v in ("approve", "approve_for_job", "reject")
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COFOUNDER_TARGET", "COFOUNDER_TOKEN", "COFOUNDER_ON_BEHALF_OF"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_stdout_is_terminal", lambda: True)


def tool_approval(job_id: str, arguments: str = ARGUMENTS, **fields: Any) -> escalation_pb2.Escalation:
    escalation = with_fields(new_escalation(job_id), fields)
    escalation.ClearField("options")
    escalation.MergeFrom(
        escalation_pb2.Escalation(
            trigger=escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL,
            problem=f"The agent wants to run deploy_service with {arguments}",
            tool_name="deploy_service",
            tool_call=escalation_pb2.ToolCallReview(arguments_json=arguments, arguments_digest=DIGEST),
            options=APPROVAL_OPTIONS,
        )
    )
    return escalation


def open_question(job_id: str, **fields: Any) -> escalation_pb2.Escalation:
    escalation = with_fields(new_escalation(job_id), fields)
    escalation.ClearField("options")
    escalation.problem = "Which regions?"
    return escalation


def with_fields(escalation: escalation_pb2.Escalation, fields: dict[str, Any]) -> escalation_pb2.Escalation:
    for name, value in fields.items():
        setattr(escalation, name, value)
    return escalation


TEXT = {"answer_kind": escalation_pb2.ESCALATION_ANSWER_KIND_TEXT, "answer_max_chars": 10}
SCHEMA = {
    "type": "object",
    "properties": {"replicas": {"type": "integer"}, "region": {"enum": ["eu", "us"]}},
    "required": ["replicas"],
}
VALUE = {"answer_kind": escalation_pb2.ESCALATION_ANSWER_KIND_VALUE, "answer_schema_json": json.dumps(SCHEMA)}


def resolves(harness: Harness) -> list[escalation_service_pb2.ResolveEscalationRequest]:
    return [call.request for call in harness.recorder.calls_to("ResolveEscalation")]


# --- the interactive resolve -----------------------------------------------------------------


async def test_interactive_resolve_shows_the_call_and_approves_the_shown_digest(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    # More arguments than a listing shows: approving shows every one of them.
    many = json.dumps({f"key{n:02}": n for n in range(30)}, separators=(",", ":"))
    escalation = harness.escalations.add(tool_approval(job.job_id, many))
    monkeypatch.setattr(sys, "stdin", _TypedInput("1\n\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id[:8]) == 0
    captured = capsys.readouterr()
    (resolved,) = json_lines(captured.out)
    assert resolved["decision"] == "approve"
    (request,) = resolves(harness)
    assert (request.escalation_id, request.decision) == (escalation.escalation_id, "approve")
    assert (request.arguments_digest, request.edited_arguments_json, request.guidance) == (DIGEST, "", "")
    err = captured.err.splitlines()
    assert "tool: deploy_service" in err
    assert '    "key00": 0,' in err
    assert '    "key29": 29' in err
    assert not any("more lines" in line for line in err)
    options = err[err.index("  1. approve") :][:3]
    assert options == ["  1. approve", "  2. approve_for_job", "  3. reject"]


async def test_interactive_reject_sends_no_digest_nor_edit(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(tool_approval(job.job_id))
    monkeypatch.setattr(sys, "stdin", _TypedInput("reject\nnot during the freeze\n"))

    edit = '{"replicas": 2, "service": "web"}'
    assert (
        await run_cli(harness, "escalations", "resolve", escalation.escalation_id, "--edit-json", edit) == 0
    )
    err = capsys.readouterr().err
    assert "message for the agent (optional): " in err
    (request,) = resolves(harness)
    assert (request.decision, request.guidance) == ("reject", "not during the freeze")
    # The server refuses edited arguments with a rejection: the person chose not to run it.
    assert (request.arguments_digest, request.edited_arguments_json) == ("", "")


async def test_interactive_approval_with_an_edit_shows_the_diff(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(tool_approval(job.job_id))
    monkeypatch.setattr(sys, "stdin", _TypedInput("2\nonly two\n"))

    edit = '{"service": "web", "replicas": 2}'
    assert (
        await run_cli(harness, "escalations", "resolve", escalation.escalation_id, "--edit-json", edit) == 0
    )
    err = capsys.readouterr().err
    assert '-  "replicas": 4,\n+  "replicas": 2,' in err
    assert err.index("+++ edited") < err.index("choice [1-3]")
    (request,) = resolves(harness)
    assert (request.decision, request.arguments_digest) == ("approve_for_job", DIGEST)
    assert json.loads(request.edited_arguments_json) == {"replicas": 2, "service": "web"}


async def test_interactive_free_text_answer_within_its_limit(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    question = harness.escalations.add(open_question(job.job_id, **TEXT))
    monkeypatch.setattr(sys, "stdin", _TypedInput("\nfar too long an answer\n  eu, us  \n"))

    assert await run_cli(harness, "escalations", "resolve", question.escalation_id) == 0
    captured = capsys.readouterr()
    (resolved,) = json_lines(captured.out)
    assert resolved["answer"] == "eu, us"
    (request,) = resolves(harness)
    assert (request.answer, request.decision, request.arguments_digest) == ("eu, us", "", "")
    assert "question: Which regions?" in captured.err
    assert "expects: free text, at most 10 characters" in captured.err
    assert "an answer is required" in captured.err
    assert "at most 10 characters, not 22" in captured.err


async def test_interactive_value_answer_must_be_json(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    question = harness.escalations.add(open_question(job.job_id, **VALUE))
    monkeypatch.setattr(sys, "stdin", _TypedInput('two replicas\n{"replicas": 2}\n'))

    assert await run_cli(harness, "escalations", "resolve", question.escalation_id) == 0
    err = capsys.readouterr().err
    assert 'expects: a JSON value: object {replicas: integer (required), region: one of "eu", "us"}' in err
    assert "not JSON (Expecting value: line 1 column 1 (char 0))" in err
    (request,) = resolves(harness)
    assert request.answer == '{"replicas": 2}'


@pytest.mark.parametrize("kind", ["tool", "text", "value"])
async def test_resolve_without_an_answer_or_a_terminal_is_a_usage_error(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(
        tool_approval(job.job_id)
        if kind == "tool"
        else open_question(job.job_id, **(TEXT if kind == "text" else VALUE))
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id) == 2
    assert (
        "--decision or --answer is required when standard input is not a terminal" in capsys.readouterr().err
    )
    assert harness.recorder.calls == []


async def test_interactive_resolve_of_a_decided_escalation_asks_nothing(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(
        tool_approval(job.job_id, status=escalation_pb2.ESCALATION_STATUS_RESOLVED)
    )
    monkeypatch.setattr(sys, "stdin", _TypedInput("1\n\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id) == 2
    captured = capsys.readouterr()
    assert f"error: escalation {escalation.escalation_id} is resolved, not pending" in captured.err
    assert "choice" not in captured.err
    assert resolves(harness) == []


# --- approve and reject ----------------------------------------------------------------------


async def test_approve_and_reject_take_id_prefixes(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job())
    first = harness.escalations.add(
        with_escalation_id(tool_approval(job.job_id), "abcd1234-0000-4000-8000-000000000001")
    )
    second = harness.escalations.add(
        with_escalation_id(tool_approval(job.job_id), "abce5678-0000-4000-8000-000000000002")
    )

    edit = '{"service": "web", "replicas": 2}'
    assert await run_cli(harness, "escalations", "approve", "ABCD", "--edit-json", edit) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith('call: deploy_service {\n  "replicas": 4,\n  "service": "web"\n}\n')
    assert "--- arguments\n+++ edited\n" in captured.err
    assert '-  "replicas": 4,\n+  "replicas": 2,' in captured.err
    assert await run_cli(harness, "escalations", "reject", "abce5", "--message", "not during the freeze") == 0
    assert await run_cli(harness, "escalations", "approve", "abc") == 2  # too short
    assert "too short" in capsys.readouterr().err

    approved, rejected = resolves(harness)
    assert (approved.escalation_id, approved.decision, approved.arguments_digest) == (
        first.escalation_id,
        "approve",
        DIGEST,
    )
    assert (rejected.escalation_id, rejected.decision, rejected.guidance) == (
        second.escalation_id,
        "reject",
        "not during the freeze",
    )
    assert (rejected.arguments_digest, rejected.edited_arguments_json) == ("", "")


def with_escalation_id(
    escalation: escalation_pb2.Escalation, escalation_id: str
) -> escalation_pb2.Escalation:
    escalation.escalation_id = escalation_id
    return escalation


@pytest.mark.parametrize("command", [["approve"], ["reject", "--message", "no"]])
async def test_approve_or_reject_of_a_question_is_a_usage_error(
    harness: Harness, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    job = harness.jobs.add(new_job())
    question = harness.escalations.add(new_escalation(job.job_id))

    assert await run_cli(harness, "escalations", command[0], question.escalation_id[:8], *command[1:]) == 2
    err = capsys.readouterr().err
    assert f"escalation {question.escalation_id} is a question, not a tool call to {command[0]}" in err
    assert f"cofounder escalations resolve {question.escalation_id[:8]}" in err
    assert resolves(harness) == []


# --- what people read ------------------------------------------------------------------------


async def test_get_on_a_terminal_shows_the_call_and_the_commands(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job())
    approval = harness.escalations.add(tool_approval(job.job_id))
    question = harness.escalations.add(open_question(job.job_id, **TEXT))

    assert await run_cli(harness, "escalations", "get", approval.escalation_id) == 0
    lines = capsys.readouterr().out.splitlines()
    about = lines[lines.index("") + 1 :]
    assert about == [
        "tool: deploy_service",
        "arguments:",
        "  {",
        '    "replicas": 4,',
        '    "service": "web"',
        "  }",
        f"approve: cofounder escalations approve {approval.escalation_id}  [--for-job] [--edit-json JSON]",
        f"reject:  cofounder escalations reject {approval.escalation_id} --message TEXT",
    ]

    assert await run_cli(harness, "escalations", "get", question.escalation_id) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("") + 1 :] == [
        "expects: free text, at most 10 characters",
        f"answer:  cofounder escalations resolve {question.escalation_id} --answer TEXT",
    ]


async def test_piped_get_stays_one_json_object(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    job = harness.jobs.add(new_job())
    approval = harness.escalations.add(tool_approval(job.job_id))

    assert await run_cli(harness, "escalations", "get", approval.escalation_id) == 0
    (got,) = json_lines(capsys.readouterr().out)
    assert got["tool_call"]["arguments_json"] == ARGUMENTS


async def test_list_on_a_terminal_says_how_to_decide_each_pending_one(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job())
    approval = harness.escalations.add(tool_approval(job.job_id))
    question = harness.escalations.add(open_question(job.job_id, **VALUE))
    harness.escalations.add(open_question(job.job_id, status=escalation_pb2.ESCALATION_STATUS_RESOLVED))

    assert await run_cli(harness, "escalations", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    footer = lines[lines.index("to decide:") + 1 :]
    short_q, short_a = question.escalation_id[:8], approval.escalation_id[:8]
    schema = 'object {replicas: integer (required), region: one of "eu", "us"}'
    assert footer == [
        f"  {short_q}  expects: a JSON value: {schema}",
        f"            answer:  cofounder escalations resolve {short_q} --answer JSON",
        f"  {short_a}  approve: cofounder escalations approve {short_a}  [--for-job] [--edit-json JSON]",
        f"            reject:  cofounder escalations reject {short_a} --message TEXT",
    ]


async def test_list_with_nothing_pending_has_no_footer(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job())
    harness.escalations.add(tool_approval(job.job_id, status=escalation_pb2.ESCALATION_STATUS_RESOLVED))
    assert await run_cli(harness, "escalations", "list", "--all") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


async def test_escalation_feed_on_a_terminal_shows_the_call(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job())
    approval = harness.escalations.add(tool_approval(job.job_id))

    assert await run_cli(harness, "escalations", "watch", "--after", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    short = approval.escalation_id[:8]
    assert lines[0].startswith(f"pending   {short}  job ")
    assert lines[1:] == [
        "          tool: deploy_service",
        "          arguments:",
        "            {",
        '              "replicas": 4,',
        '              "service": "web"',
        "            }",
        f"          approve: cofounder escalations approve {short}  [--for-job] [--edit-json JSON]",
        f"          reject:  cofounder escalations reject {short} --message TEXT",
    ]


def test_long_arguments_are_cut_short_in_listings() -> None:
    many = json.dumps({f"key{n:02}": "x" * 200 if n == 0 else n for n in range(30)})
    escalation = tool_approval("job", many)
    lines = question_lines(escalation)
    arguments = lines[lines.index("arguments:") + 1 : lines.index("  1. approve")]
    assert len(arguments) == 13  # 12 lines of the JSON, then how many more
    assert len(arguments[1]) == 2 + 100
    assert arguments[1].startswith('    "key00": "xxx')
    assert arguments[1].endswith("x…")
    assert arguments[-1] == (
        f"  … 20 more lines (all of them: cofounder escalations get {escalation.escalation_id[:8]} --json)"
    )
    assert len(question_lines(escalation, argument_lines=None)) == len(lines) - 13 + 32


def test_a_decided_escalation_in_the_feed_is_one_line() -> None:
    answered = open_question(
        "job-1", status=escalation_pb2.ESCALATION_STATUS_RESOLVED, answer="eu and us", **TEXT
    )
    message = escalation_service_pb2.WatchEscalationsResponse(
        events=escalation_service_pb2.EscalationEventBatch(
            events=[
                escalation_service_pb2.EscalationEvent(
                    kind=escalation_service_pb2.ESCALATION_EVENT_KIND_RESOLVED, escalation=answered
                )
            ]
        )
    )
    (line,) = escalation_watch_lines(message)
    assert line.endswith("Which regions?  -> eu and us")


@pytest.mark.parametrize(
    ("schema", "summary"),
    [
        ("", "any JSON value"),
        ("{}", "any JSON value"),
        ('{"type": "integer", "minimum": 1}', "integer"),
        ('{"type": ["string", "null"]}', "string or null"),
        ('{"enum": [1, "two"]}', 'one of 1, "two"'),
        ('{"type": "array", "items": {"type": "string"}}', "array of string"),
        (
            '{"properties": {"a": {"type": "object", "properties": {"b": {"const": true}}}}}',
            "object {a: object {b: true}}",
        ),
        ("{not json", "{not json"),
        ('{"properties": {"a": {}}, "required": "a"}', "object {a: any JSON value}"),
        ('{"properties": {"a": {}}, "required": [["a"], "a"]}', "object {a: any JSON value (required)}"),
    ],
)
def test_schema_summary(schema: str, summary: str) -> None:
    assert schema_summary(schema) == summary


def test_schema_summary_is_cut_short() -> None:
    schema = {"type": "object", "properties": {f"field{n}": {"type": "string"} for n in range(40)}}
    summary = schema_summary(json.dumps(schema))
    assert len(summary) == 160
    assert summary.startswith("object {field0: string, field1: string")
    assert summary.endswith("…")


# --- submit: a tool approval policy ----------------------------------------------------------

_SUBMIT = ["submit", "--project", "p", "--goal", "g", "--brain", "scripted", "--budget-usd", "1"]


@pytest.mark.parametrize(
    ("options", "policy"),
    [
        ([], None),
        (["--approve-tools", "deploy_*, shell"], {"tools": ["deploy_*", "shell"]}),
        (
            ["--approve-tools", "deploy_*", "--approve-tools", "db_migrate", "--approval-deadline", "600"],
            {"tools": ["deploy_*", "db_migrate"], "deadlineSeconds": 600},
        ),
        (
            ["--approve-tools", "deploy", "--approval-deadline", "60", "--approve-on-timeout"],
            {"tools": ["deploy"], "deadlineSeconds": 60, "onTimeout": "TOOL_APPROVAL_TIMEOUT_APPROVE"},
        ),
    ],
)
async def test_submit_sends_the_tool_approval_policy(
    harness: Harness, capsys: pytest.CaptureFixture[str], options: list[str], policy: dict[str, Any] | None
) -> None:
    assert await run_cli(harness, *_SUBMIT, *options) == 0
    (job,) = json_lines(capsys.readouterr().out)
    (call,) = harness.recorder.calls_to("SubmitJob")
    if policy is None:
        assert not call.request.agent.HasField("tool_approval")
        assert "tool_approval" not in job["agent"]
    else:
        assert json_format.MessageToDict(call.request.agent.tool_approval) == policy


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--approve-tools", "deploy,,shell"], "expected comma-separated tool names or patterns"),
        (["--approve-tools", ""], "expected comma-separated tool names or patterns"),
        (["--approve-tools", "deploy", "--approval-deadline", "-5"], "must not be negative"),
        (["--approval-deadline", "60"], "--approval-deadline and --approve-on-timeout need --approve-tools"),
        (["--approve-on-timeout"], "--approval-deadline and --approve-on-timeout need --approve-tools"),
        (
            ["--approve-tools", "deploy", "--approve-on-timeout"],
            "--approve-on-timeout needs --approval-deadline",
        ),
        (
            ["--approve-tools", "deploy", "--approval-deadline", "0", "--approve-on-timeout"],
            "needs --approval-deadline",
        ),
        (["--approve-tools", "deploy", "--approval-deadline", "99999999999"], "invalid agent spec"),
    ],
)
async def test_submit_refuses_an_incoherent_policy_before_calling(
    harness: Harness, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert await run_cli(harness, *_SUBMIT, *options) == 2
    assert message in capsys.readouterr().err
    assert harness.recorder.calls == []
