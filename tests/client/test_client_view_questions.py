"""Pending tool approvals and open questions in the live view: the rich panel (recorded on a
console), the plain lines, and the events of an approval in the event list."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from rich.console import Console

from cofounder.agent.v1 import escalation_pb2, event_pb2, job_pb2
from cofounder_client.live import PlainOutput
from cofounder_client.view import JobView, describe_event
from cofounder_client.view_render import render_job_view

JOB = "0b8f0d6e-0000-4000-8000-000000000000"
APPROVAL = "a1b2c3d4-0000-4000-8000-000000000001"
QUESTION = "e5f6a7b8-0000-4000-8000-000000000002"
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def approval(arguments: dict[str, object]) -> escalation_pb2.Escalation:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return escalation_pb2.Escalation(
        escalation_id=APPROVAL,
        job_id=JOB,
        status=escalation_pb2.ESCALATION_STATUS_PENDING,
        trigger=escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL,
        problem=f"The agent wants to run deploy_service with {canonical}",
        tool_name="deploy_service",
        tool_call=escalation_pb2.ToolCallReview(arguments_json=canonical, arguments_digest="d" * 64),
        options=[escalation_pb2.EscalationOption(value=v) for v in ("approve", "approve_for_job", "reject")],
    )


def question(**fields: object) -> escalation_pb2.Escalation:
    return escalation_pb2.Escalation(
        escalation_id=QUESTION,
        job_id=JOB,
        status=escalation_pb2.ESCALATION_STATUS_PENDING,
        trigger=escalation_pb2.ESCALATION_TRIGGER_AGENT_QUESTION,
        problem="How many replicas, and where?",
        **fields,  # type: ignore[arg-type]
    )


def waiting_view(*escalations: escalation_pb2.Escalation) -> JobView:
    view = JobView(JOB)
    view.apply_snapshot(
        job_pb2.JobStatusSnapshot(
            job_id=JOB,
            job_status=job_pb2.JOB_STATUS_RUNNING,
            agent_state=job_pb2.AGENT_STATE_WAITING_FOR_INPUT,
            daily_budget_microdollars=5_000_000,
            pending_escalation_ids=[e.escalation_id for e in escalations],
        )
    )
    for escalation in escalations:
        view.apply_escalation(escalation)
    return view


def rendered(view: JobView) -> list[str]:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(render_job_view(view, NOW))
    return [line.rstrip("│ ") for line in console.export_text().splitlines()]


def question_block(lines: list[str], first: str) -> list[str]:
    """The question's lines from ``first`` on, as the value column shows them."""
    start = next(index for index, line in enumerate(lines) if first in line)
    column = lines[start].index(first)
    block = [lines[start][column:]]
    for line in lines[start + 1 :]:
        if line[:column].strip("│ "):
            break  # the next field, or the panel's end
        block.append(line[column:])
    return block


def test_panel_shows_a_tool_call_with_its_arguments_and_the_commands() -> None:
    lines = rendered(waiting_view(approval({"replicas": 4, "service": "web"})))
    assert any(line.startswith("│ question  a tool call waits for approval") for line in lines)
    assert question_block(lines, "a tool call waits") == [
        "a tool call waits for approval",
        "  tool: deploy_service",
        "  arguments:",
        "    {",
        '      "replicas": 4,',
        '      "service": "web"',
        "    }",
        "  approve: cofounder escalations approve a1b2c3d4  [--for-job] [--edit-json JSON]",
        "  reject:  cofounder escalations reject a1b2c3d4 --message TEXT",
    ]
    assert not any("1. approve" in line for line in lines)  # the commands say it


def test_panel_cuts_long_arguments_short() -> None:
    lines = rendered(waiting_view(approval({f"key{n:02}": n for n in range(20)})))
    text = "\n".join(lines)
    assert '"key06": 6' in text  # eight lines: the brace and seven keys
    assert '"key07"' not in text
    assert "… 14 more lines (all of them: cofounder escalations get a1b2c3d4 --json)" in text


def test_panel_says_what_an_open_question_expects() -> None:
    schema = {"type": "object", "properties": {"replicas": {"type": "integer"}}, "required": ["replicas"]}
    value = question(
        answer_kind=escalation_pb2.ESCALATION_ANSWER_KIND_VALUE, answer_schema_json=json.dumps(schema)
    )
    text = "\n".join(rendered(waiting_view(value)))
    assert "question  How many replicas, and where?" in text
    assert "expects: a JSON value: object {replicas: integer (required)}" in text
    assert "answer:  cofounder escalations resolve e5f6a7b8 --answer JSON" in text

    free = question(answer_kind=escalation_pb2.ESCALATION_ANSWER_KIND_TEXT, answer_max_chars=10_000)
    text = "\n".join(rendered(waiting_view(free)))
    assert "expects: free text, at most 10,000 characters" in text
    assert "answer:  cofounder escalations resolve e5f6a7b8 --answer TEXT" in text


def test_plain_lines_show_the_call_and_the_commands() -> None:
    out = io.StringIO()
    output = PlainOutput(out, io.StringIO())
    escalation = approval({"replicas": 4, "service": "web"})
    view = waiting_view(escalation)
    output.changed(view, escalation)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"       escalation {APPROVAL} (job {JOB})"
    assert "       tool: deploy_service" in lines
    assert '           "replicas": 4,' in lines
    assert lines[-2:] == [
        "       approve: cofounder escalations approve a1b2c3d4  [--for-job] [--edit-json JSON]",
        "       reject:  cofounder escalations reject a1b2c3d4 --message TEXT",
    ]


def test_events_of_an_approval_read_as_sentences() -> None:
    def described(**payload: object) -> str:
        return describe_event(event_pb2.JobEvent(job_id=JOB, sequence=1, type="t", **payload))  # type: ignore[arg-type]

    assert (
        described(
            agent_tool_approval_requested=event_pb2.AgentToolApprovalRequested(
                tool_name="deploy_service", arguments_json='{"replicas":4}'
            )
        )
        == 'asks to run deploy_service {"replicas":4}'
    )
    assert (
        described(
            agent_tool_approved=event_pb2.AgentToolApproved(
                tool_name="deploy_service", approved_by="alice", edited=True, for_job=True
            )
        )
        == "deploy_service approved by alice with edited arguments for the job"
    )
    assert (
        described(agent_tool_approved=event_pb2.AgentToolApproved(tool_name="deploy_service"))
        == "deploy_service approved"
    )
    assert (
        described(
            agent_tool_rejected=event_pb2.AgentToolRejected(
                tool_name="deploy_service", rejected_by="bob", message="not during the freeze"
            )
        )
        == "deploy_service rejected by bob: not during the freeze"
    )
    # A free-text answer has no decision: the event says what the agent was told.
    assert (
        described(
            agent_escalation_resolved=event_pb2.AgentEscalationResolved(
                resolved_by="alice", delivered="Answered by alice: eu and us"
            )
        )
        == "answered by alice: Answered by alice: eu and us"
    )
