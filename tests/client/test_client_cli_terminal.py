"""The ``cofounder`` command line for people: text on a terminal, id prefixes, the
interactive resolve, reconnect notices, --version; and JSON unchanged for programs."""

from __future__ import annotations

import io
import sys
import time

import pytest
from client_fakes import RPC_TIMEOUT, Harness, WatchPlan, event, new_escalation, new_job
from google.protobuf import json_format
from test_client_cli import json_lines, run_cli

from cofounder.agent.v1 import job_pb2
from cofounder_client import cli
from cofounder_server import config as server_config


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COFOUNDER_TARGET", "COFOUNDER_TOKEN", "COFOUNDER_ON_BEHALF_OF"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the command line take the captured stdout for a terminal."""
    monkeypatch.setattr(cli, "_stdout_is_terminal", lambda: True)


class _TypedInput(io.StringIO):
    """Standard input a person types into."""

    def isatty(self) -> bool:
        return True


def with_id(job: job_pb2.Job, job_id: str) -> job_pb2.Job:
    job.job_id = job_id
    return job


async def test_version_of_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(None, "--version") == 0
    out = capsys.readouterr().out
    assert out.startswith("cofounder ")
    assert out.split()[1][0].isdigit()

    with pytest.raises(SystemExit) as exit_:
        server_config.build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"cofounder-server {server_config.server_version()}\n"


async def test_piped_output_is_the_full_json_mapping(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job(daily_budget_microdollars=10))
    escalation = harness.escalations.add(new_escalation(job.job_id))

    assert await run_cli(harness, "get", job.job_id) == 0
    assert await run_cli(harness, "escalations", "get", escalation.escalation_id) == 0
    got, got_escalation = json_lines(capsys.readouterr().out)
    # Scripts rely on every field being present, defaults included.
    expected = json_format.MessageToDict(
        job, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    assert got == expected
    assert got["outcome_detail"] == ""
    assert got_escalation["attempts"] == []
    assert got_escalation["decision_source"] == "DECISION_SOURCE_UNSPECIFIED"


async def test_terminal_shows_set_fields_and_tables(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job("web", "Ship it", daily_budget_microdollars=2_500_000))
    harness.jobs.add(new_job("web", "Second", status=job_pb2.JOB_STATUS_RUNNING))
    escalation = harness.escalations.add(new_escalation(job.job_id))

    assert await run_cli(harness, "get", job.job_id) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"job_id: {job.job_id}" in lines
    assert "daily_budget_microdollars: $2.50" in lines
    assert not any(line.startswith(("outcome", "agent.model", "labels")) for line in lines)

    assert await run_cli(harness, "escalations", "get", escalation.escalation_id) == 0
    text = capsys.readouterr().out
    assert "UNSPECIFIED" not in text
    assert "attempts" not in text
    assert "options[1]: postgres: PostgreSQL" in text.splitlines()
    assert "status: pending" in text.splitlines()

    assert await run_cli(harness, "list", "--project", "web") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["JOB", "PROJECT", "STATUS", "BUDGET/DAY", "CREATED", "GOAL"]
    assert [row.split()[0] for row in rows] == [j.job_id[:8] for j in reversed(harness.jobs.jobs.values())]
    assert "running" in rows[0]

    assert await run_cli(harness, "escalations", "list") == 0
    header, row, blank, *deciding = capsys.readouterr().out.splitlines()
    assert header.split()[0] == "ESCALATION"
    assert row.startswith(escalation.escalation_id[:8])
    assert row.endswith("Which database?")
    short = escalation.escalation_id[:8]
    assert (blank, deciding) == (
        "",
        ["to decide:", f"  {short}  answer:  cofounder escalations resolve {short}  [--decision VALUE]"],
    )


async def test_json_flag_keeps_json_on_a_terminal(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job())
    assert await run_cli(harness, "status", job.job_id, "--json") == 0
    (status,) = json_lines(capsys.readouterr().out)
    assert status["job_id"] == job.job_id
    assert status["pending_escalation_ids"] == []


async def test_unique_prefix_stands_for_the_id(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    job = harness.jobs.add(with_id(new_job(), "abcd1234-0000-4000-8000-000000000001"))
    harness.jobs.add(with_id(new_job(), "abce0000-0000-4000-8000-000000000002"))

    assert await run_cli(harness, "get", "ABCD1") == 0
    (got,) = json_lines(capsys.readouterr().out)
    assert got["job_id"] == job.job_id
    assert [c.request.job_id for c in harness.recorder.calls_to("GetJob")] == [job.job_id]

    escalation = harness.escalations.add(new_escalation(job.job_id))
    assert await run_cli(harness, "escalations", "get", escalation.escalation_id[:6]) == 0
    (got_escalation,) = json_lines(capsys.readouterr().out)
    assert got_escalation["escalation_id"] == escalation.escalation_id


async def test_ambiguous_prefix_lists_the_candidates(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    first = harness.jobs.add(with_id(new_job(), "abcd1234-0000-4000-8000-000000000001"))
    second = harness.jobs.add(with_id(new_job(), "abcd5678-0000-4000-8000-000000000002"))

    assert await run_cli(harness, "status", "abcd") == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err
    assert first.job_id in err
    assert second.job_id in err
    assert harness.recorder.calls_to("GetJobStatus") == []


async def test_unknown_and_too_short_prefixes(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    harness.jobs.add(with_id(new_job(), "abcd1234-0000-4000-8000-000000000001"))

    assert await run_cli(harness, "get", "ffff") == 15
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: no job id starts with 'ffff'")

    assert await run_cli(harness, "get", "abc") == 2
    assert "too short" in capsys.readouterr().err
    # A full id is the server's to judge: no listing.
    assert await run_cli(harness, "get", "ffffffff-0000-4000-8000-000000000000") == 15
    assert [c.method for c in harness.recorder.calls] == ["ListJobs", "GetJob"]


async def test_resolve_without_decision_asks_on_a_terminal(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(new_escalation(job.job_id))
    monkeypatch.setattr(sys, "stdin", _TypedInput("7\nsqlite\nUse a file.\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id[:8]) == 0
    captured = capsys.readouterr()
    (resolved,) = json_lines(captured.out)  # the dialogue stays off stdout
    assert (resolved["decision"], resolved["guidance"]) == ("sqlite", "Use a file.")
    assert "question: Which database?" in captured.err
    assert "  1. postgres: PostgreSQL" in captured.err
    assert "choose a number from 1 to 2" in captured.err  # "7" was refused, then asked again


async def test_resolve_by_number(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(new_escalation(job.job_id))
    monkeypatch.setattr(sys, "stdin", _TypedInput("1\n\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id) == 0
    (resolved,) = json_lines(capsys.readouterr().out)
    assert (resolved["decision"], resolved["guidance"]) == ("postgres", "")


async def test_resolve_without_decision_or_terminal_is_a_usage_error(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = harness.jobs.add(new_job())
    escalation = harness.escalations.add(new_escalation(job.job_id))
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n"))

    assert await run_cli(harness, "escalations", "resolve", escalation.escalation_id) == 2
    error = capsys.readouterr().err
    assert "--decision or --answer is required when standard input is not a terminal" in error
    assert harness.recorder.calls == []


async def test_follow_reports_reconnects_on_stderr(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    job = harness.jobs.add(new_job())
    harness.jobs.watch_plans[job.job_id] = WatchPlan(
        events=[event(job.job_id, n) for n in range(1, 4)], drops=[1, 1]
    )

    assert await run_cli(harness, "watch", job.job_id, "--after", "0", "--follow") == 0
    captured = capsys.readouterr()
    assert [e["sequence"] for e in json_lines(captured.out)] == ["1", "2", "3"]
    reconnects = captured.err.splitlines()
    assert len(reconnects) == 2
    assert reconnects[0].startswith(f"reconnecting to {harness.target} (attempt 1 of 30, next in ")
    assert reconnects[0].endswith("UNAVAILABLE: connection reset")
    # Each connection delivered an event before it dropped: the count of failures restarts.
    assert reconnects[1].startswith(f"reconnecting to {harness.target} (attempt 1 of 30, ")


async def test_follow_fails_at_once_when_the_server_cannot_be_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert await run_cli(None, "--target", "127.0.0.1:1", "watch", "x", "--follow") == 24
    assert time.monotonic() - started < RPC_TIMEOUT
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


async def test_connection_options_are_explained_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(None, "--help") == 0
    top_help = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in top_help if line.lstrip().startswith("--ca-file")] == ["--ca-file"]
    assert await run_cli(None, "escalations", "resolve", "--help") == 0
    help_text = capsys.readouterr().out
    assert "--ca-file" not in help_text
    assert "--decision" in help_text
    assert "see cofounder --help" in help_text


async def test_watch_on_a_terminal_draws_the_live_view(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job("web", "Ship it"))
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[event(job.job_id, n) for n in range(1, 4)])

    assert await run_cli(harness, "watch", job.job_id[:8]) == 0
    # Off a real terminal rich draws the last frame only.
    text = capsys.readouterr().out
    assert f"job {job.job_id} · web" in text
    assert "Ship it" in text
    assert "thinking: step 3" in text


async def test_watch_without_rich_prints_plain_lines_and_a_hint(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import rich.console fails
    job = harness.jobs.add(new_job("web", "Ship it"))
    harness.jobs.watch_plans[job.job_id] = WatchPlan(events=[event(job.job_id, n) for n in range(1, 3)])

    assert await run_cli(harness, "watch", job.job_id, "--after", "0") == 0
    captured = capsys.readouterr()
    assert "pip install 'cofounder-client[cli]'" in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == f"job {job.job_id} (web): Ship it"
    assert lines[1].startswith("status: ")
    assert [line.split("  ")[-1] for line in lines[2:]] == ["thinking: step 1", "thinking: step 2"]


async def test_fleet_and_escalation_feed_on_a_terminal(
    harness: Harness, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    job = harness.jobs.add(new_job(status=job_pb2.JOB_STATUS_RUNNING))
    escalation = harness.escalations.add(new_escalation(job.job_id))

    assert await run_cli(harness, "jobs") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["JOB", "STATUS", "AGENT"]
    assert row.split()[:2] == [job.job_id, "running"]

    assert await run_cli(harness, "escalations", "watch", "--job", job.job_id, "--after", "0") == 0
    pending, pending_command, raised, raised_command = capsys.readouterr().out.splitlines()
    short = escalation.escalation_id[:8]
    assert pending == f"pending   {short}  job {job.job_id[:8]}  Which database?"
    assert raised == f"raised    {short}  job {job.job_id[:8]}  Which database?"
    command = f"          answer:  cofounder escalations resolve {short}  [--decision VALUE]"
    assert pending_command == raised_command == command
