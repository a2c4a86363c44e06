"""The ``cofounder`` command line, end to end against the fake server.

``main()`` runs its own event loop, so each invocation runs in a worker thread while the
server keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from client_fakes import RPC_TIMEOUT, Harness, WatchPlan, event, new_escalation, new_job

from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client.cli import main


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COFOUNDER_TARGET", "COFOUNDER_TOKEN", "COFOUNDER_ON_BEHALF_OF"):
        monkeypatch.delenv(name, raising=False)


async def run_cli(harness: Harness | None, *argv: str) -> int:
    target = ["--target", harness.target] if harness else []
    return await asyncio.wait_for(
        asyncio.to_thread(main, [*target, "--timeout", str(RPC_TIMEOUT), *argv]), RPC_TIMEOUT * 2
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_submit_prints_the_job_and_sends_every_option(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COFOUNDER_TOKEN", "env-token")
    config = tmp_path / "turns.json"
    config.write_text('{"turns": [{"text": "hi"}]}')

    code = await run_cli(
        harness,
        "submit",
        "--project", "demo",
        "--goal", "Write a haiku",
        "--budget-usd", "2.29",
        "--brain", "scripted",
        "--model", "m-1",
        "--config-json", f"@{config}",
        "--label", "team=core",
        "--label", "env=dev",
        "--request-id", "req-7",
        "--on-behalf-of", "user-9",  # connection options may follow the command
    )  # fmt: skip

    assert code == 0
    (job,) = json_lines(capsys.readouterr().out)
    assert job["status"] == "JOB_STATUS_QUEUED"
    assert job["project_id"] == "demo"
    assert job["labels"] == {"team": "core", "env": "dev"}
    assert job["daily_budget_microdollars"] == "2290000"  # proto JSON writes int64 as a string
    (call,) = harness.recorder.calls
    assert call.metadata["authorization"] == "Bearer env-token"
    assert call.metadata["cofounder-on-behalf-of"] == "user-9"
    assert call.request.request_id == "req-7"
    assert call.request.daily_budget_microdollars == 2_290_000
    assert call.request.agent.brain == "scripted"
    assert call.request.agent.config["turns"][0]["text"] == "hi"


async def test_invalid_argument_prints_violations_and_exits_13(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(
        harness, "submit", "--project", "p", "--goal", "", "--budget-microdollars", "5", "--brain", "b"
    )
    assert code == 13
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: INVALID_ARGUMENT: invalid SubmitJobRequest",
        "  reason: INVALID_ARGUMENT",
        "  goal: must not be empty",
    ]


async def test_get_unknown_job_exits_15(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(harness, "get", "nope") == 15
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: job nope not found\n")


async def test_unreachable_server_exits_24(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(None, "--target", "127.0.0.1:1", "status", "x") == 24
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


async def test_job_commands_print_one_object_each(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job(daily_budget_microdollars=10))

    assert await run_cli(harness, "get", job.job_id) == 0
    assert await run_cli(harness, "status", job.job_id) == 0
    assert await run_cli(harness, "wake", job.job_id, "--top-up-microdollars", "5") == 0
    assert await run_cli(harness, "cancel", job.job_id, "--reason", "done") == 0

    got, status, woken, cancelled = json_lines(capsys.readouterr().out)
    assert got["job_id"] == job.job_id
    assert status["agent_state"] == "AGENT_STATE_SLEEPING"
    assert woken["daily_budget_microdollars"] == "15"
    assert cancelled["status"] == "JOB_STATUS_CANCELLED"
    assert cancelled["outcome_detail"] == "done"


async def test_list_prints_one_job_per_line_and_the_next_token_on_stderr(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [harness.jobs.add(new_job("p", status=job_pb2.JOB_STATUS_RUNNING)) for _ in range(3)]
    harness.jobs.add(new_job("p", status=job_pb2.JOB_STATUS_READY))

    assert await run_cli(harness, "list", "--project", "p", "--status", "running", "--page-size", "2") == 0
    captured = capsys.readouterr()
    assert [j["job_id"] for j in json_lines(captured.out)] == [jobs[2].job_id, jobs[1].job_id]
    assert "next_page_token: 2" in captured.err

    assert await run_cli(harness, "list", "--status", "JOB_STATUS_RUNNING", "--page-size", "2", "--all") == 0
    captured = capsys.readouterr()
    assert [j["job_id"] for j in json_lines(captured.out)] == [j.job_id for j in reversed(jobs)]
    assert captured.err == ""
    assert [c.request.page_token for c in harness.recorder.calls_to("ListJobs")] == ["", "", "2"]


async def test_watch_prints_stream_messages_and_follow_prints_events(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 4)], drops=[99, 2]
    )

    assert await run_cli(harness, "watch", job.job_id, "--after", "0") == 0
    messages = json_lines(capsys.readouterr().out)
    assert [next(iter(m)) for m in messages] == ["snapshot", "events", "heartbeat", "events"]

    assert await run_cli(harness, "watch", job.job_id, "--after", "0", "--follow") == 0
    events = json_lines(capsys.readouterr().out)
    # The second connection dropped after two events; --follow resumed from sequence 2.
    assert [e["sequence"] for e in events] == ["1", "2", "3"]
    assert events[0]["type"] == "agent.thinking"
    assert events[0]["agent_thinking"]["text"] == "step 1"
    assert [c.request.after_sequence for c in harness.recorder.calls_to("WatchJobEvents")] == [0, 0, 2]


async def test_escalation_commands(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(new_escalation(job.job_id))

    assert await run_cli(harness, "escalations", "list", "--job", job.job_id, "--status", "pending") == 0
    assert await run_cli(harness, "escalations", "get", escalation.escalation_id) == 0
    assert await run_cli(harness, "escalations", "watch", "--job", job.job_id, "--after", "0") == 0
    assert (
        await run_cli(
            harness,
            "escalations",
            "resolve",
            escalation.escalation_id,
            "--decision",
            "sqlite",
            "--guidance",
            "g",
        )
        == 0
    )
    captured = capsys.readouterr()
    listed, got, snapshot, raised, resolved = json_lines(captured.out)
    assert captured.err == "agent: waiting for this answer; it continues now\n"
    assert listed["escalation_id"] == got["escalation_id"] == escalation.escalation_id
    assert snapshot["snapshot"]["pending"][0]["escalation_id"] == escalation.escalation_id
    assert raised["events"]["events"][0]["kind"] == "ESCALATION_EVENT_KIND_RAISED"
    assert (resolved["status"], resolved["decision"], resolved["guidance"]) == (
        "ESCALATION_STATUS_RESOLVED",
        "sqlite",
        "g",
    )

    assert (
        await run_cli(harness, "escalations", "resolve", escalation.escalation_id, "--decision", "mongo")
        == 13
    )
    assert "  decision: must be one of: postgres, sqlite" in capsys.readouterr().err

    harness.escalations.agent_wake_time = datetime(2026, 3, 2, tzinfo=UTC)
    assert (
        await run_cli(harness, "escalations", "resolve", escalation.escalation_id, "--decision", "postgres")
        == 0
    )
    assert capsys.readouterr().err == (
        "agent: asleep on its budget; it acts on the answer when it wakes at 2026-03-02T00:00:00Z\n"
    )


async def test_tool_approvals_show_the_call_and_approve_or_reject_it(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job())
    arguments = '{"amount":1,"key":"a"}'
    approval = escalation_pb2.Escalation(
        tool_name="counter",
        tool_call=escalation_pb2.ToolCallReview(arguments_json=arguments, arguments_digest="d" * 64),
        options=[escalation_pb2.EscalationOption(value=v) for v in ("approve", "approve_for_job", "reject")],
    )
    first = harness.escalations.add(new_escalation(job.job_id))
    first.ClearField("options")
    first.MergeFrom(approval)
    second = harness.escalations.add(new_escalation(job.job_id))
    second.ClearField("options")
    second.MergeFrom(approval)

    edit = '{"key": "a", "amount": 5}'
    assert await run_cli(harness, "escalations", "approve", first.escalation_id, "--edit-json", edit) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith('call: counter {\n  "amount": 1,\n  "key": "a"\n}\n')
    assert '-  "amount": 1,\n+  "amount": 5,' in captured.err
    (approved,) = json_lines(captured.out)
    assert approved["tool_call"]["approved_arguments_json"] == '{"amount": 5, "key": "a"}'
    assert await run_cli(harness, "escalations", "reject", second.escalation_id, "--message", "not now") == 0
    assert (
        await run_cli(
            harness, "escalations", "approve", first.escalation_id, "--for-job", "--digest", "e" * 64
        )
        == 0
    )
    capsys.readouterr()
    edited, rejected, for_job = [c.request for c in harness.recorder.calls_to("ResolveEscalation")]
    assert (edited.decision, edited.arguments_digest) == ("approve", "d" * 64)
    assert json.loads(edited.edited_arguments_json) == {"key": "a", "amount": 5}
    assert (rejected.decision, rejected.guidance, rejected.arguments_digest) == ("reject", "not now", "")
    assert (for_job.decision, for_job.arguments_digest) == ("approve_for_job", "e" * 64)


async def test_resolve_sends_a_free_text_answer(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    job = harness.jobs.add(new_job())
    question = harness.escalations.add(
        new_escalation(job.job_id, answer_kind=escalation_pb2.ESCALATION_ANSWER_KIND_TEXT)
    )
    assert await run_cli(harness, "escalations", "resolve", question.escalation_id, "--answer", "v2") == 0
    (resolved,) = json_lines(capsys.readouterr().out)
    assert resolved["answer"] == "v2"
    (request,) = [c.request for c in harness.recorder.calls_to("ResolveEscalation")]
    assert (request.decision, request.answer) == ("", "v2")


_SUBMIT = ["submit", "--project", "p", "--goal", "g", "--brain", "b"]


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--project", "p", "--budget-usd", "1", "--brain", "b"],  # no --goal
        [*_SUBMIT, "--budget-usd", "0.0000001"],
        [*_SUBMIT, "--budget-usd", "1", "--config-json", "[1]"],
        [*_SUBMIT, "--budget-usd", "1", "--config-json", "@/nonexistent/turns.json"],
        [*_SUBMIT, "--budget-usd", "1", "--label", "novalue"],
        ["list", "--status", "sleeping"],
        ["watch", "j", "--after", "-1"],
        ["--timeout", "-1", "get", "j"],
        ["escalations"],
        ["escalations", "resolve", "e"],  # neither --decision nor --answer
        ["escalations", "resolve", "e", "--decision", "a", "--answer", "b"],
        ["escalations", "approve", "e", "--edit-json", "[1]"],
        ["escalations", "resolve", "e", "--decision", "approve", "--edit-json", "{bad"],
        [],
    ],
)
async def test_usage_errors_exit_2_without_calling(
    harness: Harness, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert await run_cli(harness, *argv) == 2
    assert "error" in capsys.readouterr().err
    assert harness.recorder.calls == []


async def test_mutual_tls_options_need_each_other(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(harness, "--cert-file", "/dev/null", "get", "j") == 2
    assert "together" in capsys.readouterr().err
    assert harness.recorder.calls == []


async def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(None, "--help") == 0
    assert "exit status" in capsys.readouterr().out
