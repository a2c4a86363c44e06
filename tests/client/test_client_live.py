"""The live view and ``cofounder demo`` against a real server: the embedded defaults, the
executor running the scripted agent, real events rendered, a restart survived."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from cofounder.agent.v1 import escalation_pb2, event_pb2, job_pb2
from cofounder_client import Client
from cofounder_client.cli import main
from cofounder_client.demo import run_demo
from cofounder_client.live import PlainOutput, follow_view
from cofounder_client.view import JobView
from cofounder_client.view_render import render_job_view
from cofounder_server.app import Application
from cofounder_server.config import Settings
from tests.support import eventually, free_port, throwaway_database

# Starting a server (Redis engine, migrations) and running the job on a loaded machine.
DEMO_DEADLINE = 90.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COFOUNDER_TARGET", "COFOUNDER_TOKEN", "COFOUNDER_ON_BEHALF_OF"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """A database of the test's own: its executor must not run other tests' queued jobs."""
    async with throwaway_database("cofounder_cli") as url:
        yield url


@pytest.fixture
async def executor_app(
    settings_for: Callable[..., Settings], fresh_database_url: str
) -> AsyncIterator[Application]:
    """A server that runs agents, on the real clock."""
    app = await Application.start(settings_for(fresh_database_url, executor_enabled=True))
    yield app
    await app.stop(grace_seconds=1.0)


async def test_demo_runs_to_ready_on_its_embedded_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.wait_for(
        asyncio.to_thread(main, ["demo", "--pace", "0", "--data-dir", str(tmp_path)]), DEMO_DEADLINE
    )

    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    # Event lines: sequence, time of day, what happened.
    texts = [match[1] for line in lines if (match := re.fullmatch(r" *\d+  \d\d:\d\d:\d\d  (.*)", line))]
    # The story, in order: work, sleep on the budget, top-up, a question, the answer, done.
    story = [
        "phase research started",
        "model call $3.90; today $4.80 of $5.00 (96%)",
        "sleeping until",
        "waking (requested), top-up $3.00",
        "asks: Publish the landing page now?",
        "answered by local: publish (Approved by the demo.)",
        "phase launch started",
        "job ready (completed)",
    ]
    positions = [[i for i, text in enumerate(texts) if text.startswith(step)] for step in story]
    assert all(len(found) == 1 for found in positions), positions
    assert positions == sorted(positions)
    assert "       question: Publish the landing page now?" in lines
    assert "         1. publish: Publish now  (recommended)" in lines
    assert lines[-1] == ("status: ready (completed); agent completed; budget $5.15 of $8.00 today (64%)")
    assert (tmp_path / "cofounder.db").exists()  # the embedded server kept its data there


async def test_live_view_renders_the_demo_jobs_real_events(executor_app: Application) -> None:
    async with Client(f"127.0.0.1:{executor_app.port}") as client:
        played = await asyncio.wait_for(run_demo(client, PlainOutput(io.StringIO()), pace=0), DEMO_DEADLINE)
        assert played.finished
        events: list[event_pb2.JobEvent] = []
        async with contextlib.aclosing(client.follow_job_events(played.job_id, after_sequence=0)) as stream:
            async for job_event in stream:
                events.append(job_event)

    view = JobView(played.job_id)
    frames: dict[str, str] = {}
    for job_event in events:
        view.apply_event(job_event)
        kind = job_event.WhichOneof("payload")
        if kind in ("agent_sleeping", "agent_waiting_for_input", "job_status_changed"):
            # Two hours, three minutes and four seconds before the agent would wake.
            now = (
                view.wake_time - timedelta(hours=2, minutes=3, seconds=4)
                if view.wake_time
                else datetime.now(UTC)
            )
            frames.setdefault("end" if view.finished else kind, _render(view, now))

    sleeping = frames["agent_sleeping"]
    assert "running  agent sleeping" in sleeping
    assert "96%  $4.80 of $5.00 today" in sleeping
    assert "█" * 29 + "░" in sleeping  # 96 % of a 30-cell bar
    assert "wakes   in 2h 03m 04s" in sleeping
    assert "phase   build" in sleeping

    asking = frames["agent_waiting_for_input"]
    assert "agent waiting for input" in asking
    assert "Publish the landing page now?" in asking
    assert "1. publish: Publish now  (recommended)" in asking
    assert "2. hold: Hold for a review" in asking
    assert "(top-ups $3.00)" in asking
    assert "wakes" not in asking

    end = frames["end"]
    assert "ready (completed)  agent completed" in end
    assert "64%  $5.15 of $8.00 today (top-ups $3.00)" in end
    assert "Publish the landing page now?" not in end
    assert "phase   launch (completed)" in end
    assert "job ready (completed)" in end  # the last event listed
    assert f"sequence {events[-1].sequence}" in end


def _render(view: JobView, now: datetime) -> str:
    console = Console(record=True, width=110, file=io.StringIO(), color_system=None)
    console.print(render_job_view(view, now))
    return console.export_text()


async def test_live_view_resumes_across_a_server_restart(
    settings_for: Callable[..., Settings], fresh_database_url: str
) -> None:
    settings = settings_for(fresh_database_url, executor_enabled=True, listen=f"127.0.0.1:{free_port()}")
    app = await Application.start(settings)
    out, err = io.StringIO(), io.StringIO()
    try:
        async with Client(settings.listen) as client:
            job = await client.submit_job(
                project_id="live-restart",
                goal="Sleep, survive a restart, finish",
                daily_budget_microdollars=5_000_000,
                agent={"brain": "scripted", "config": {"turns": SLEEPY_TURNS}},
            )
            view = JobView(job.job_id)
            following = asyncio.create_task(
                follow_view(client, view, PlainOutput(out, err), after_sequence=0, max_backoff=0.5)
            )
            await _until(lambda: view.agent_state == job_pb2.AGENT_STATE_SLEEPING)

            await app.stop(grace_seconds=1.0)
            await _until(lambda: "reconnecting" in err.getvalue())
            assert not following.done()
            app = await Application.start(settings)
            await _until(lambda: out.getvalue().count("status: ") >= 2)  # a second snapshot

            await client.wake_agent(job.job_id, top_up_microdollars=3_000_000)
            await asyncio.wait_for(following, DEMO_DEADLINE)
    finally:
        await app.stop(grace_seconds=1.0)

    assert view.finished
    assert err.getvalue().startswith(f"reconnecting to {settings.listen} (attempt 1 of 30, next in ")
    sequences = [int(match[1]) for match in re.finditer(r"^ *(\d+)  \d\d:", out.getvalue(), re.MULTILINE)]
    # Every event once, in order, across the restart.
    assert sequences == list(range(1, sequences[-1] + 1))
    assert "waking (requested), top-up $3.00" in out.getvalue()
    assert out.getvalue().splitlines()[-1].startswith("status: ready (completed)")


# One call of 96 % of $5.00 (sleeps on its budget), then done.
SLEEPY_TURNS = [
    {
        "text": "Spending",
        "tool_calls": [{"name": "narrate", "input": {"text": "Spent most of it"}}],
        "usage": {"input_tokens": 1_000_000, "output_tokens": 120_000},
    },
    {"text": "Done after the restart."},
]


async def _until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, bool, within=DEMO_DEADLINE)


async def _cli(port: int, *argv: str) -> int:
    return await asyncio.wait_for(
        asyncio.to_thread(main, ["--target", f"127.0.0.1:{port}", *argv]), DEMO_DEADLINE
    )


async def _pending(client: Client, job_id: str) -> escalation_pb2.Escalation:
    async def probe() -> list[escalation_pb2.Escalation]:
        page = await client.list_escalations(
            job_id=job_id, statuses=[escalation_pb2.ESCALATION_STATUS_PENDING]
        )
        return list(page.escalations)

    (escalation,) = await eventually(probe, bool, within=DEMO_DEADLINE)
    return escalation


async def _events(client: Client, job_id: str) -> list[event_pb2.JobEvent]:
    events: list[event_pb2.JobEvent] = []
    async with contextlib.aclosing(client.follow_job_events(job_id, after_sequence=0)) as stream:
        async for job_event in stream:
            events.append(job_event)
    return events


async def test_cli_submits_a_policy_and_approves_the_call_it_showed(
    executor_app: Application, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = [
        {
            "text": "Deploying",
            "tool_calls": [{"name": "narrate", "input": {"text": "Going live", "phase": "ship"}}],
        },
        {"text": "Shipped."},
    ]
    submitted = await _cli(
        executor_app.port,
        "submit",
        "--project", "approvals",
        "--goal", "Ship after a yes",
        "--budget-usd", "5",
        "--brain", "scripted",
        "--config-json", json.dumps({"turns": turns}),
        "--approve-tools", "narr*,deploy_*",
        "--approval-deadline", "3600",
    )  # fmt: skip
    assert submitted == 0
    (job,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert job["agent"]["tool_approval"] == {
        "tools": ["narr*", "deploy_*"],
        "deadline_seconds": 3600,
        "on_timeout": "TOOL_APPROVAL_TIMEOUT_REJECT",  # the default, said
    }

    async with Client(f"127.0.0.1:{executor_app.port}") as client:
        escalation = await _pending(client, job["job_id"])
        assert escalation.trigger == escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL

        # A person at a terminal: resolve by prefix, see the call, choose 1 (approve).
        monkeypatch.setattr(sys, "stdin", _Typed("1\nGo ahead.\n"))
        assert await _cli(executor_app.port, "escalations", "resolve", escalation.escalation_id[:8]) == 0
        captured = capsys.readouterr()
        (resolved,) = [json.loads(line) for line in captured.out.splitlines()]
        assert (resolved["decision"], resolved["status"]) == ("approve", "ESCALATION_STATUS_RESOLVED")
        assert "tool: narrate" in captured.err
        assert '    "text": "Going live"' in captured.err
        assert "agent: waiting for this answer; it continues now" in captured.err

        events = await asyncio.wait_for(_events(client, job["job_id"]), DEMO_DEADLINE)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds.index("agent_tool_approval_requested") < kinds.index("agent_tool_approved")
    assert kinds.index("agent_tool_approved") < kinds.index("agent_tool_called")
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_READY


async def test_cli_rejects_a_call_and_answers_a_free_text_question(
    executor_app: Application, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = [
        {"text": "Deploying", "tool_calls": [{"name": "narrate", "input": {"text": "Going live"}}]},
        {
            "text": "Asking",
            "tool_calls": [
                {"name": "ask_human", "input": {"question": "Which region?", "max_answer_chars": 20}}
            ],
        },
        {"text": "Done."},
    ]
    async with Client(f"127.0.0.1:{executor_app.port}") as client:
        job = await client.submit_job(
            project_id="approvals",
            goal="Ask twice",
            daily_budget_microdollars=5_000_000,
            agent={"brain": "scripted", "config": {"turns": turns}, "tool_approval": {"tools": ["narrate"]}},
        )
        approval = await _pending(client, job.job_id)
        assert (
            await _cli(
                executor_app.port, "escalations", "reject", approval.escalation_id[:8], "--message", "not now"
            )
            == 0
        )
        capsys.readouterr()

        question = await _pending(client, job.job_id)
        assert question.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_TEXT
        monkeypatch.setattr(sys, "stdin", _Typed("somewhere far away from here\neu-west\n"))
        assert await _cli(executor_app.port, "escalations", "resolve", question.escalation_id) == 0
        captured = capsys.readouterr()
        assert "expects: free text, at most 20 characters" in captured.err
        assert "at most 20 characters, not 28" in captured.err
        (resolved,) = [json.loads(line) for line in captured.out.splitlines()]
        assert resolved["answer"] == "eu-west"

        events = await asyncio.wait_for(_events(client, job.job_id), DEMO_DEADLINE)
    rejected = next(e.agent_tool_rejected for e in events if e.HasField("agent_tool_rejected"))
    assert rejected.tool_name == "narrate"
    assert "not now" in rejected.message
    assert not any(
        e.HasField("agent_tool_called") and e.agent_tool_called.tool_name == "narrate" for e in events
    )
    answered = [e.agent_escalation_resolved for e in events if e.HasField("agent_escalation_resolved")]
    assert "eu-west" in answered[-1].delivered
    assert events[-1].job_status_changed.status == job_pb2.JOB_STATUS_READY


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (["--approve-tools", "deploy now"], "agent.tool_approval.tools[0]"),
        (
            ["--approve-tools", "deploy", "--approval-deadline", "2592001"],
            "agent.tool_approval.deadline_seconds",
        ),
    ],
)
async def test_cli_policy_the_server_refuses_is_invalid_argument(
    executor_app: Application, capsys: pytest.CaptureFixture[str], options: list[str], field: str
) -> None:
    code = await _cli(
        executor_app.port,
        "submit", "--project", "approvals", "--goal", "g", "--budget-usd", "1", "--brain", "scripted",
        *options,
    )  # fmt: skip
    assert code == 13
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT: ")
    assert f"  {field}: " in err


class _Typed(io.StringIO):
    """Standard input a person types into."""

    def isatty(self) -> bool:
        return True
