"""Renders a :class:`~cofounder_client.view.JobView` with ``rich``: the panel that
``cofounder watch`` redraws in place on a terminal.

``rich`` is an optional dependency (``pip install 'cofounder-client[cli]'``); importing this
module without it raises :class:`ImportError`, and the command line falls back to plain lines.
"""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cofounder.agent.v1 import escalation_pb2, job_pb2
from cofounder_client.terminal import decide_lines, escalation_detail_lines, is_tool_approval
from cofounder_client.view import JobView, dollars, enum_word, format_countdown

__all__ = ["render_job_view"]

_BAR_WIDTH = 30
# A pending tool call's arguments in the panel: the view has more to show than the call.
_ARGUMENT_LINES = 8

_STATUS_STYLES: dict[job_pb2.JobStatus.ValueType, str] = {
    job_pb2.JOB_STATUS_QUEUED: "cyan",
    job_pb2.JOB_STATUS_RUNNING: "bold blue",
    job_pb2.JOB_STATUS_READY: "bold green",
    job_pb2.JOB_STATUS_FAILED: "bold red",
    job_pb2.JOB_STATUS_CANCELLED: "yellow",
}
_AGENT_STYLES: dict[job_pb2.AgentState.ValueType, str] = {
    job_pb2.AGENT_STATE_WORKING: "blue",
    job_pb2.AGENT_STATE_SLEEPING: "magenta",
    job_pb2.AGENT_STATE_WAITING_FOR_INPUT: "bold yellow",
    job_pb2.AGENT_STATE_ERROR: "red",
    job_pb2.AGENT_STATE_BUDGET_EXCEEDED: "red",
    job_pb2.AGENT_STATE_COMPLETED: "green",
}


def render_job_view(view: JobView, now: datetime) -> RenderableType:
    """The whole view as one renderable; ``now`` (UTC) sets the wake countdown."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    if view.goal:
        fields.add_row("goal", view.goal)
    fields.add_row("status", _status(view))
    fields.add_row("budget", _budget(view))
    if view.wake_time is not None and view.agent_state == job_pb2.AGENT_STATE_SLEEPING:
        fields.add_row(
            "wakes",
            Text.assemble(
                ("in " + format_countdown((view.wake_time - now).total_seconds()), "magenta"),
                f"  (at {view.wake_time.strftime('%Y-%m-%d %H:%M:%S UTC')}, or when woken)",
            ),
        )
    if view.phase:
        fields.add_row("phase", view.phase + (" (completed)" if view.phase_done else ""))
    for escalation_id, escalation in view.pending.items():
        fields.add_row("question", _question(escalation_id, escalation))
    if view.connection:
        fields.add_row("stream", Text(view.connection, style="bold yellow"))
    if view.note:
        fields.add_row("demo", Text(view.note, style="italic"))

    parts: list[RenderableType] = [fields]
    if view.recent:
        events = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        events.add_column(justify="right", style="dim", no_wrap=True)
        events.add_column(style="dim", no_wrap=True)
        events.add_column(overflow="fold")
        for line in tuple(view.recent):
            clock = line.time.strftime("%H:%M:%S") if line.time else ""
            events.add_row(str(line.sequence), clock, line.text)
        parts.append(Text("last events", style="bold"))
        parts.append(events)
    title = f"job {view.job_id}" + (f" · {view.project_id}" if view.project_id else "")
    return Panel(Group(*parts), title=title, title_align="left", subtitle=f"sequence {view.latest_sequence}")


def _status(view: JobView) -> Text:
    status = enum_word(job_pb2.JobStatus.Name(view.job_status), "JOB_STATUS_")
    text = Text(status, style=_STATUS_STYLES.get(view.job_status, ""))
    if view.outcome != job_pb2.JOB_OUTCOME_UNSPECIFIED:
        text.append(f" ({enum_word(job_pb2.JobOutcome.Name(view.outcome), 'JOB_OUTCOME_')})")
    if view.agent_state != job_pb2.AGENT_STATE_UNSPECIFIED:
        state = enum_word(job_pb2.AgentState.Name(view.agent_state), "AGENT_STATE_")
        text.append("  agent ")
        text.append(state, style=_AGENT_STYLES.get(view.agent_state, ""))
    if view.outcome_detail and view.finished:
        text.append(f"  {view.outcome_detail}", style="dim")
    return text


def _budget(view: JobView) -> Text:
    budget = view.daily_budget_microdollars
    spent = view.spent_today_microdollars
    percent = (
        view.budget_percent if view.budget_percent is not None else (spent * 100 // budget if budget else 0)
    )
    filled = min(_BAR_WIDTH, round(_BAR_WIDTH * min(percent, 100) / 100))
    style = "green" if percent < 75 else "yellow" if percent < 90 else "red"
    text = Text()
    text.append("█" * filled, style=style)
    text.append("░" * (_BAR_WIDTH - filled), style="dim")
    text.append(f" {percent}%  {dollars(spent)} of {dollars(budget)} today")
    if view.top_ups_microdollars:
        text.append(f" (top-ups {dollars(view.top_ups_microdollars)})")
    return text


def _question(escalation_id: str, escalation: escalation_pb2.Escalation | None) -> Text:
    text = Text()
    if escalation is None:
        text.append(f"{escalation_id[:8]}: waiting for an answer", style="bold yellow")
        return text
    if is_tool_approval(escalation):
        text.append("a tool call waits for approval", style="bold yellow")
    else:
        text.append(escalation.problem or "(no question text)", style="bold yellow")
    for line in escalation_detail_lines(escalation, argument_lines=_ARGUMENT_LINES):
        text.append(f"\n  {line}")
    if not is_tool_approval(escalation):
        for index, option in enumerate(escalation.options, 1):
            text.append(f"\n  {index}. {option.value}")
            if option.label and option.label != option.value:
                text.append(f": {option.label}")
            if option.value == escalation.recommended_action:
                text.append("  (recommended)", style="green")
            if option.description:
                text.append(f"\n     {option.description}", style="dim")
    for line in decide_lines(escalation):
        text.append(f"\n  {line}", style="dim")
    return text
