"""``cofounder demo``: a job's whole life in about half a minute, shown by the live view.

A scripted agent researches and builds (spending most of its $5.00 daily budget), sleeps on
its budget until the window resets, is woken with a $3.00 top-up, asks a person whether to
publish, receives the answer and finishes. The demo plays the person: it tops up the budget
and answers the question after ``pace`` seconds each, saying so on screen (anyone may answer
first from another terminal with ``cofounder escalations resolve``).

Without ``--target`` (nor ``COFOUNDER_TARGET``) the demo starts a server in this process on
its embedded defaults, in a temporary data directory; that needs the ``cofounder-server``
package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

from cofounder.agent.v1 import event_pb2, job_pb2
from cofounder_client.client import Client
from cofounder_client.errors import FailedPreconditionError
from cofounder_client.live import RICH_HINT, LiveOutput, PlainOutput, follow_view, rich_output
from cofounder_client.view import JobView, dollars

__all__ = [
    "DEMO_BUDGET_MICRODOLLARS",
    "DEMO_TOP_UP_MICRODOLLARS",
    "DemoFailedError",
    "demo_turns",
    "run_demo",
    "run_demo_command",
]

DEMO_BUDGET_MICRODOLLARS: Final = 5_000_000
DEMO_TOP_UP_MICRODOLLARS: Final = 3_000_000
DEMO_ANSWER: Final = "publish"
DEMO_PROJECT: Final = "demo"
_MODEL: Final = "claude-sonnet-4"  # priced by the server's built-in table: $3 / $15 per million


class DemoFailedError(Exception):
    """The demo's job did not end ready."""


def demo_turns() -> list[dict[str, Any]]:
    """The scripted agent's turns: $0.90 and $3.90 of model calls (96 % of $5.00: it sleeps),
    then a question, then the launch."""

    def narrate(text: str, phase: str) -> dict[str, Any]:
        return {"name": "narrate", "input": {"text": text, "phase": phase}}

    return [
        {
            "text": "Reading the brief and the competitors' pages",
            "tool_calls": [narrate("Collecting what the page must say", "research")],
            "usage": {"input_tokens": 200_000, "output_tokens": 20_000},
        },
        {
            "text": "Writing the copy and building the page",
            "tool_calls": [narrate("Hero, pricing and sign-up sections drafted", "build")],
            "usage": {"input_tokens": 1_000_000, "output_tokens": 60_000},
        },
        {
            "text": "The page is ready; publishing needs a yes from a person",
            "tool_calls": [
                {
                    "name": "ask_human",
                    "call_id": "ask-publish",
                    "input": {
                        "question": "Publish the landing page now?",
                        "options": [
                            {"value": "publish", "label": "Publish now"},
                            {"value": "hold", "label": "Hold for a review"},
                        ],
                        "recommended": "publish",
                    },
                }
            ],
            "usage": {"input_tokens": 20_000, "output_tokens": 2_000},
        },
        {
            "text": "Publishing as decided",
            "tool_calls": [narrate("Publishing the page", "launch")],
            "usage": {"input_tokens": 50_000, "output_tokens": 5_000},
        },
        {"text": "The landing page is live.", "usage": {"input_tokens": 10_000, "output_tokens": 500}},
    ]


async def run_demo(client: Client, output: LiveOutput, *, pace: float) -> JobView:
    """Submit the demo job and play the person until it ends; returns the final view.

    Args:
        client: a client of the server to run on (its executor runs the agent).
        output: where the live view goes.
        pace: seconds to wait before the top-up and before the answer (0: act at once).
    """
    job = await client.submit_job(
        project_id=DEMO_PROJECT,
        goal="Launch the landing page",
        daily_budget_microdollars=DEMO_BUDGET_MICRODOLLARS,
        agent={"brain": "scripted", "model": _MODEL, "config": {"turns": demo_turns()}},
        labels={"demo": "true"},
    )
    view = JobView(job.job_id)
    view.apply_job(job)
    view.note = f"submitted a job with a {dollars(DEMO_BUDGET_MICRODOLLARS)} daily budget"
    actions: set[asyncio.Task[None]] = set()

    async def react(item: job_pb2.JobStatusSnapshot | event_pb2.JobEvent) -> None:
        if not isinstance(item, event_pb2.JobEvent):
            return
        kind = item.WhichOneof("payload")
        if kind == "agent_sleeping":
            action = _top_up(client, view, output, pace)
        elif kind == "agent_escalation_raised":
            action = _answer(
                client, view, output, item.agent_escalation_raised.escalation.escalation_id, pace
            )
        else:
            if view.finished:
                view.note = "done"
            return
        task = asyncio.create_task(action)
        actions.add(task)
        task.add_done_callback(actions.discard)

    try:
        await follow_view(client, view, output, after_sequence=0, on_item=react)
    finally:
        for task in actions:
            task.cancel()
        for task in list(actions):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return view


async def _top_up(client: Client, view: JobView, output: LiveOutput, pace: float) -> None:
    short = view.job_id[:8]
    async for remaining in _countdown(pace):
        view.note = (
            f"topping up the budget with {dollars(DEMO_TOP_UP_MICRODOLLARS)} in {remaining}s "
            f"(as: cofounder wake {short} --top-up-microdollars {DEMO_TOP_UP_MICRODOLLARS})"
        )
        output.changed(view, None)
    try:
        await client.wake_agent(view.job_id, top_up_microdollars=DEMO_TOP_UP_MICRODOLLARS)
    except FailedPreconditionError:
        view.note = "the agent was already awake (woken from elsewhere)"
        return
    view.note = f"woke the agent with a {dollars(DEMO_TOP_UP_MICRODOLLARS)} top-up"
    output.changed(view, None)


async def _answer(client: Client, view: JobView, output: LiveOutput, escalation_id: str, pace: float) -> None:
    async for remaining in _countdown(pace):
        view.note = f"answering {DEMO_ANSWER!r} in {remaining}s, unless you answer first"
        output.changed(view, None)
    try:
        await client.resolve_escalation(escalation_id, decision=DEMO_ANSWER, guidance="Approved by the demo.")
    except FailedPreconditionError:
        view.note = "the question was answered from elsewhere"
        return
    view.note = f"answered {DEMO_ANSWER!r}"
    output.changed(view, None)


async def _countdown(seconds: float) -> AsyncIterator[int]:
    """Yield the whole seconds left, once a second, until ``seconds`` have passed."""
    remaining = seconds
    while remaining > 0:
        yield max(1, round(remaining))
        step = min(1.0, remaining)
        # Pacing for people watching; the demo's progress never waits on it otherwise.
        await asyncio.sleep(step)
        remaining -= step


async def run_demo_command(
    args: argparse.Namespace, make_client: Callable[[str | None], Client], *, for_people: bool
) -> None:
    """``cofounder demo``: run the demo on ``--target``, or on a server started here."""
    output: LiveOutput | None = rich_output() if for_people else None
    if output is None:
        if for_people:
            print(RICH_HINT, file=sys.stderr)
        output = PlainOutput()
    async with contextlib.AsyncExitStack() as stack:
        target = args.target
        if not target:
            target = await stack.enter_async_context(_embedded_server(args.data_dir))
        async with make_client(target) as client:
            view = await run_demo(client, output, pace=args.pace)
    if view.job_status != job_pb2.JOB_STATUS_READY:
        status = job_pb2.JobStatus.Name(view.job_status).removeprefix("JOB_STATUS_").lower()
        raise DemoFailedError(f"the demo job {view.job_id} ended {status}, not ready")


@contextlib.asynccontextmanager
async def _embedded_server(data_dir: Path | None) -> AsyncIterator[str]:
    """A server on its embedded defaults on a free loopback port; yields its target."""
    try:
        from cofounder_server.app import Application
        from cofounder_server.config import Settings
    except ImportError:
        raise ValueError(
            "the demo starts a server, which needs the cofounder-server package "
            "(pip install ./server); or pass --target of a running server"
        ) from None
    async with contextlib.AsyncExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cofounder-demo-")))
        print(f"starting a server in {data_dir} ...", file=sys.stderr, flush=True)
        app = await Application.start(Settings(listen="127.0.0.1:0", data_dir=data_dir))
        try:
            yield f"127.0.0.1:{app.port}"
        finally:
            await app.stop(grace_seconds=1.0)
