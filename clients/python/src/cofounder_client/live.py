"""Drives a :class:`~cofounder_client.view.JobView` from a job's stream and shows it.

:func:`follow_view` follows the job (resuming across dropped connections and server
restarts, through :meth:`Client.follow_job`), keeps the view current and hands every change
to an output: :class:`RichOutput` redraws a panel in place (``rich`` installed),
:class:`PlainOutput` prints one line per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol, TextIO

from cofounder.agent.v1 import escalation_pb2, event_pb2, job_pb2
from cofounder_client.client import Client
from cofounder_client.errors import CofounderError, OutOfRangeError
from cofounder_client.terminal import decide_lines, question_lines
from cofounder_client.view import JobView, dollars, enum_word, plain_event_line

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = [
    "RICH_HINT",
    "LiveOutput",
    "PlainOutput",
    "RichOutput",
    "follow_view",
    "rich_output",
]

RICH_HINT: Final = "hint: pip install 'cofounder-client[cli]' for a live view that updates in place"

Item = job_pb2.JobStatusSnapshot | event_pb2.JobEvent
OnItem = Callable[[Item], Awaitable[None]]

_TICK_SECONDS: Final = 1.0


class LiveOutput(Protocol):
    """Where a followed view goes."""

    def start(self, view: JobView) -> None:
        """The view is about to be followed."""

    def changed(self, view: JobView, item: Item | escalation_pb2.Escalation | None) -> None:
        """``item`` changed the view (``None``: the clock moved or a note changed)."""

    def reconnecting(self, view: JobView) -> None:
        """The stream dropped; ``view.connection`` says what happens next."""

    def stop(self, view: JobView) -> None:
        """Following has ended (the job finished, or an error)."""


async def follow_view(
    client: Client,
    view: JobView,
    output: LiveOutput,
    *,
    after_sequence: int | None = None,
    on_item: OnItem | None = None,
    max_reconnects: int = 30,
    max_backoff: float = 5.0,
) -> None:
    """Follow ``view.job_id`` until its stream ends, keeping ``view`` current on ``output``.

    Args:
        client: the client to follow with.
        view: the view to keep current.
        output: where each change is shown.
        after_sequence: events after this sequence (listed among the last events); ``None``
            for live events only. A cursor older than the retained history falls back to
            live events.
        on_item: awaited after each snapshot or event has been applied and shown.
        max_reconnects: consecutive failed reconnects tolerated (about two minutes of
            outage with the default backoff).
        max_backoff: upper bound of the delay between reconnects, in seconds.
    """

    def on_reconnect(error: CofounderError, attempt: int, delay: float) -> None:
        view.connection = (
            f"reconnecting to {client.target} (attempt {attempt} of {max_reconnects}, "
            f"next in {delay:.1f}s): {error.code.name}"
        )
        output.reconnecting(view)

    output.start(view)
    ticker = asyncio.create_task(_tick(view, output))
    try:
        cursor = after_sequence
        while True:
            try:
                await _follow(
                    client,
                    view,
                    output,
                    cursor=cursor,
                    on_item=on_item,
                    on_reconnect=on_reconnect,
                    max_reconnects=max_reconnects,
                    max_backoff=max_backoff,
                )
                return
            except OutOfRangeError:
                if cursor is None:
                    raise
                cursor = None
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        output.stop(view)


async def _follow(
    client: Client,
    view: JobView,
    output: LiveOutput,
    *,
    cursor: int | None,
    on_item: OnItem | None,
    on_reconnect: Callable[[CofounderError, int, float], None],
    max_reconnects: int,
    max_backoff: float,
) -> None:
    items = client.follow_job(
        view.job_id,
        after_sequence=cursor,
        max_reconnects=max_reconnects,
        max_backoff=max_backoff,
        on_reconnect=on_reconnect,
    )
    async with contextlib.aclosing(items):
        async for item in items:
            view.connection = ""
            if isinstance(item, job_pb2.JobStatusSnapshot):
                view.apply_snapshot(item)
            else:
                view.apply_event(item)
            output.changed(view, item)
            for escalation_id in view.unknown_escalations():
                escalation = await client.get_escalation(escalation_id)
                view.apply_escalation(escalation)
                output.changed(view, escalation)
            if on_item is not None:
                await on_item(item)


async def _tick(view: JobView, output: LiveOutput) -> None:
    # Redraws between messages, so a wake countdown or a note keeps moving.
    while True:
        await asyncio.sleep(_TICK_SECONDS)
        output.changed(view, None)


class RichOutput:
    """Redraws the view in place on a ``rich`` console (a terminal)."""

    def __init__(self, console: Console, *, now: Callable[[], datetime] | None = None) -> None:
        self._console = console
        self._now = now or (lambda: datetime.now(UTC))
        self._live: Live | None = None

    def start(self, view: JobView) -> None:
        from rich.live import Live

        self._live = Live(self._render(view), console=self._console, auto_refresh=False)
        self._live.start()

    def changed(self, view: JobView, item: Item | escalation_pb2.Escalation | None) -> None:
        if self._live is not None:
            self._live.update(self._render(view), refresh=True)

    def reconnecting(self, view: JobView) -> None:
        self.changed(view, None)

    def stop(self, view: JobView) -> None:
        if self._live is not None:
            self._live.update(self._render(view), refresh=True)
            self._live.stop()
            self._live = None

    def _render(self, view: JobView) -> RenderableType:
        from cofounder_client.view_render import render_job_view

        return render_job_view(view, self._now())


class PlainOutput:
    """Prints the view as lines: a status line per snapshot, one line per event, each
    question with its options, reconnects and notes on ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err
        self._note = ""

    def start(self, view: JobView) -> None:
        self._print(f"job {view.job_id}" + (f" ({view.project_id}): {view.goal}" if view.goal else ""))

    def changed(self, view: JobView, item: Item | escalation_pb2.Escalation | None) -> None:
        if view.note != self._note:
            self._note = view.note
            if view.note:
                self._print(f"  ({view.note})")
        if isinstance(item, job_pb2.JobStatusSnapshot):
            self._print(_status_line(view))
        elif isinstance(item, event_pb2.JobEvent):
            self._print(plain_event_line(item))
            if item.HasField("agent_escalation_raised"):
                self._print_question(item.agent_escalation_raised.escalation)
        elif isinstance(item, escalation_pb2.Escalation):
            self._print_question(item)

    def reconnecting(self, view: JobView) -> None:
        print(view.connection, file=self._err or sys.stderr, flush=True)

    def stop(self, view: JobView) -> None:
        if view.finished:
            self._print(_status_line(view))

    def _print_question(self, escalation: escalation_pb2.Escalation) -> None:
        for line in [*question_lines(escalation), *decide_lines(escalation)]:
            self._print(f"       {line}")

    def _print(self, line: str) -> None:
        print(line, file=self._out or sys.stdout, flush=True)


def _status_line(view: JobView) -> str:
    status = enum_word(job_pb2.JobStatus.Name(view.job_status), "JOB_STATUS_")
    if view.outcome:
        status += f" ({enum_word(job_pb2.JobOutcome.Name(view.outcome), 'JOB_OUTCOME_')})"
    parts = [f"status: {status}"]
    if view.agent_state:
        parts.append("agent " + enum_word(job_pb2.AgentState.Name(view.agent_state), "AGENT_STATE_"))
    budget = (
        f"budget {dollars(view.spent_today_microdollars)} of {dollars(view.daily_budget_microdollars)} today"
    )
    if view.budget_percent is not None:
        budget += f" ({view.budget_percent}%)"
    parts.append(budget)
    if view.wake_time is not None:
        parts.append("wakes " + view.wake_time.strftime("%Y-%m-%d %H:%M:%S UTC"))
    if view.pending:
        parts.append(f"{len(view.pending)} question(s) pending")
    return "; ".join(parts)


def rich_output(stream: TextIO | None = None) -> RichOutput | None:
    """A :class:`RichOutput` on ``stream`` (default stdout), or ``None`` without ``rich``."""
    try:
        from rich.console import Console

        import cofounder_client.view_render  # noqa: F401  (rich is all it needs)
    except ImportError:
        return None
    return RichOutput(Console(file=stream) if stream is not None else Console())
