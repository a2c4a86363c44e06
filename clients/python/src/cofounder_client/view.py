"""The state behind ``cofounder watch`` on a terminal: one job's live view, built from the
snapshot its stream opens with and the events that follow.

No I/O and no rendering here: :class:`JobView` folds messages into plain fields that the
renderers (:mod:`cofounder_client.view_render` with ``rich``, or the plain lines of
:func:`plain_event_line`) turn into text.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from cofounder.agent.v1 import escalation_pb2, event_pb2, job_pb2

__all__ = [
    "EventLine",
    "JobView",
    "describe_event",
    "dollars",
    "enum_word",
    "format_countdown",
    "plain_event_line",
]

_TERMINAL = frozenset({job_pb2.JOB_STATUS_READY, job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED})
_TEXT_LIMIT = 100


@dataclass(frozen=True)
class EventLine:
    """One of the last events, as the view lists it."""

    sequence: int
    time: datetime | None
    type: str
    text: str


class JobView:
    """What a person watching one job wants to see, kept current message by message.

    Args:
        job_id: the job watched.
        recent: how many of the last events to keep.
    """

    def __init__(self, job_id: str, *, recent: int = 8) -> None:
        self.job_id = job_id
        self.project_id = ""
        self.goal = ""
        self.job_status: job_pb2.JobStatus.ValueType = job_pb2.JOB_STATUS_UNSPECIFIED
        self.agent_state: job_pb2.AgentState.ValueType = job_pb2.AGENT_STATE_UNSPECIFIED
        self.outcome: job_pb2.JobOutcome.ValueType = job_pb2.JOB_OUTCOME_UNSPECIFIED
        self.outcome_detail = ""
        self.wake_time: datetime | None = None
        self.budget_percent: int | None = None
        self.daily_budget_microdollars = 0
        self.spent_today_microdollars = 0
        self.top_ups_microdollars = 0
        """Top-ups seen in the events watched (``agent.waking``)."""
        self.pending: dict[str, escalation_pb2.Escalation | None] = {}
        """Pending escalations by id; ``None`` until the escalation itself is known."""
        self.phase = ""
        self.phase_done = False
        self.latest_sequence = 0
        self.recent: deque[EventLine] = deque(maxlen=recent)
        self.connection = ""
        """Empty while the stream is up; what is happening while it reconnects."""
        self.note = ""
        """A line of commentary shown with the view (the demo explains itself here)."""
        # Events up to here are history the snapshot already accounts for.
        self._snapshot_sequence = 0

    @property
    def finished(self) -> bool:
        """The job has reached a terminal status: its stream ends."""
        return self.job_status in _TERMINAL

    def apply_job(self, job: job_pb2.Job) -> None:
        """Take the job's durable record: its project, goal and, once it ended, outcome."""
        self.project_id = job.project_id
        self.goal = job.goal
        if job.outcome_detail:
            self.outcome_detail = job.outcome_detail

    def apply_snapshot(self, snapshot: job_pb2.JobStatusSnapshot) -> None:
        """Replace the live fields with ``snapshot`` (sent when a stream opens or reopens)."""
        self.job_status = snapshot.job_status
        self.agent_state = snapshot.agent_state
        self.outcome = snapshot.outcome
        self.wake_time = snapshot.wake_time.ToDatetime(tzinfo=UTC) if snapshot.HasField("wake_time") else None
        self.budget_percent = snapshot.budget_percent if snapshot.HasField("budget_percent") else None
        self.daily_budget_microdollars = snapshot.daily_budget_microdollars
        self.spent_today_microdollars = snapshot.spent_today_microdollars
        self.latest_sequence = max(self.latest_sequence, snapshot.latest_event_sequence)
        self._snapshot_sequence = snapshot.latest_event_sequence
        known = self.pending
        self.pending = {
            escalation_id: known.get(escalation_id) for escalation_id in snapshot.pending_escalation_ids
        }

    def apply_escalation(self, escalation: escalation_pb2.Escalation) -> None:
        """Show a pending escalation's question and options (or drop it once decided)."""
        if escalation.status == escalation_pb2.ESCALATION_STATUS_PENDING:
            self.pending[escalation.escalation_id] = escalation
        else:
            self.pending.pop(escalation.escalation_id, None)

    def unknown_escalations(self) -> list[str]:
        """Pending escalation ids whose question is not known yet (to fetch them)."""
        return [escalation_id for escalation_id, known in self.pending.items() if known is None]

    def apply_event(self, event: event_pb2.JobEvent) -> None:
        """Fold one event into the view and list it among the last events."""
        self.latest_sequence = max(self.latest_sequence, event.sequence)
        self.recent.append(
            EventLine(
                sequence=event.sequence,
                time=event.time.ToDatetime(tzinfo=UTC) if event.HasField("time") else None,
                type=event.type,
                text=describe_event(event),
            )
        )
        kind = event.WhichOneof("payload")
        if event.sequence <= self._snapshot_sequence:
            # Replayed history: the snapshot holds the state it led to; only what no
            # snapshot carries (the phase, the top-ups) is taken from it.
            if kind == "agent_waking":
                self.top_ups_microdollars += event.agent_waking.top_up_microdollars
            elif kind in ("phase_started", "phase_completed"):
                self._apply_phase(event)
            return
        self._apply_live(event)

    def _apply_live(self, event: event_pb2.JobEvent) -> None:
        match event.WhichOneof("payload"):
            case "job_status_changed":
                changed = event.job_status_changed
                self.job_status = changed.status
                self.outcome = changed.outcome
                if changed.detail:
                    self.outcome_detail = changed.detail
                if changed.status in _TERMINAL:
                    self.wake_time = None
                    self.agent_state = _FINAL_AGENT_STATE.get(changed.outcome, job_pb2.AGENT_STATE_ERROR)
            case "agent_thinking" | "agent_tool_called":
                self.agent_state = job_pb2.AGENT_STATE_WORKING
                self.wake_time = None
            case "agent_budget_updated":
                budget = event.agent_budget_updated
                self.budget_percent = budget.budget_percent
                self.spent_today_microdollars = budget.spent_today_microdollars
                self.daily_budget_microdollars = budget.daily_budget_microdollars
            case "agent_budget_exceeded":
                exceeded = event.agent_budget_exceeded
                self.agent_state = job_pb2.AGENT_STATE_BUDGET_EXCEEDED
                self.budget_percent = exceeded.budget_percent
                self.spent_today_microdollars = exceeded.spent_today_microdollars
                self.daily_budget_microdollars = exceeded.daily_budget_microdollars
            case "agent_sleeping":
                self.agent_state = job_pb2.AGENT_STATE_SLEEPING
                self.wake_time = event.agent_sleeping.wake_time.ToDatetime(tzinfo=UTC)
            case "agent_waking":
                self.agent_state = job_pb2.AGENT_STATE_WORKING
                self.wake_time = None
                self.top_ups_microdollars += event.agent_waking.top_up_microdollars
            case "agent_waiting_for_input":
                self.agent_state = job_pb2.AGENT_STATE_WAITING_FOR_INPUT
                self.pending.setdefault(event.agent_waiting_for_input.escalation_id, None)
            case "agent_escalation_raised":
                self.apply_escalation(event.agent_escalation_raised.escalation)
            case "agent_escalation_resolved":
                self.pending.pop(event.agent_escalation_resolved.escalation_id, None)
                if not self.pending and self.agent_state == job_pb2.AGENT_STATE_WAITING_FOR_INPUT:
                    self.agent_state = job_pb2.AGENT_STATE_WORKING
            case "agent_escalation_withdrawn":
                self.pending.pop(event.agent_escalation_withdrawn.escalation_id, None)
            case "phase_started" | "phase_completed":
                self._apply_phase(event)
            case _:
                pass

    def _apply_phase(self, event: event_pb2.JobEvent) -> None:
        if event.HasField("phase_started"):
            self.phase, self.phase_done = event.phase_started.phase, False
        else:
            self.phase, self.phase_done = event.phase_completed.phase, True


_FINAL_AGENT_STATE: dict[job_pb2.JobOutcome.ValueType, job_pb2.AgentState.ValueType] = {
    job_pb2.JOB_OUTCOME_COMPLETED: job_pb2.AGENT_STATE_COMPLETED,
    job_pb2.JOB_OUTCOME_BUDGET_EXCEEDED: job_pb2.AGENT_STATE_BUDGET_EXCEEDED,
}


def enum_word(name: str, prefix: str) -> str:
    """``JOB_STATUS_RUNNING`` -> ``running``; ``AGENT_STATE_WAITING_FOR_INPUT`` -> ``waiting for input``."""
    return name.removeprefix(prefix).lower().replace("_", " ")


def dollars(microdollars: int) -> str:
    """``4_500_000`` -> ``$4.50`` (cents; fractions of a cent as far as needed)."""
    value = microdollars / 1_000_000
    if microdollars and abs(value) < 0.01:
        return f"${value:.6f}".rstrip("0")
    return f"${value:,.2f}"


def format_countdown(seconds: float) -> str:
    """A duration for people: ``7h 47m 12s``, ``3m 05s``, ``12s``."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _short(text: str, limit: int = _TEXT_LIMIT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_event(event: event_pb2.JobEvent) -> str:
    """One line saying what ``event`` means, e.g. ``sleeping until 00:00:00 UTC (budget threshold)``."""
    match event.WhichOneof("payload"):
        case "job_status_changed":
            changed = event.job_status_changed
            text = "job " + enum_word(job_pb2.JobStatus.Name(changed.status), "JOB_STATUS_")
            if changed.outcome != job_pb2.JOB_OUTCOME_UNSPECIFIED:
                text += f" ({enum_word(job_pb2.JobOutcome.Name(changed.outcome), 'JOB_OUTCOME_')})"
            return text + (f": {_short(changed.detail)}" if changed.detail else "")
        case "agent_thinking":
            return f"thinking: {_short(event.agent_thinking.text)}"
        case "agent_tool_called":
            called = event.agent_tool_called
            verb = "failed" if called.is_error else "->"
            return f"tool {called.tool_name} {verb} {_short(called.result, 80)}"
        case "agent_budget_updated":
            budget = event.agent_budget_updated
            return (
                f"model call {dollars(budget.call_cost_microdollars)}; today "
                f"{dollars(budget.spent_today_microdollars)} of {dollars(budget.daily_budget_microdollars)}"
                f" ({budget.budget_percent}%)"
            )
        case "agent_budget_exceeded":
            return f"budget exceeded ({event.agent_budget_exceeded.budget_percent}%)"
        case "agent_sleeping":
            sleeping = event.agent_sleeping
            wake = sleeping.wake_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            reason = enum_word(event_pb2.SleepReason.Name(sleeping.reason), "SLEEP_REASON_")
            return f"sleeping until {wake} ({reason})"
        case "agent_waking":
            waking = event.agent_waking
            text = f"waking ({enum_word(event_pb2.WakeReason.Name(waking.reason), 'WAKE_REASON_')})"
            if waking.top_up_microdollars:
                text += f", top-up {dollars(waking.top_up_microdollars)}"
            return text
        case "agent_retrying":
            retrying = event.agent_retrying
            limit = f"/{retrying.max_attempts}" if retrying.max_attempts else ""
            return f"retrying ({retrying.attempt}{limit}): {_short(retrying.error_message, 80)}"
        case "agent_waiting_for_input":
            return f"waiting for an answer to {event.agent_waiting_for_input.escalation_id[:8]}"
        case "agent_escalation_raised":
            return f"asks: {_short(event.agent_escalation_raised.escalation.problem)}"
        case "agent_escalation_resolved":
            resolved = event.agent_escalation_resolved
            who = f" by {resolved.resolved_by}" if resolved.resolved_by else ""
            # A free-text or value answer has no decision: what the agent was told says it.
            what = resolved.decision or _short(resolved.delivered, 80)
            return f"answered{who}: {what}" + (
                f" ({_short(resolved.guidance, 60)})" if resolved.guidance else ""
            )
        case "agent_tool_approval_requested":
            requested = event.agent_tool_approval_requested
            return f"asks to run {requested.tool_name} {_short(requested.arguments_json, 80)}"
        case "agent_tool_approved":
            approved = event.agent_tool_approved
            who = f" by {approved.approved_by}" if approved.approved_by else ""
            how = (" with edited arguments" if approved.edited else "") + (
                " for the job" if approved.for_job else ""
            )
            return f"{approved.tool_name} approved{who}{how}"
        case "agent_tool_rejected":
            rejected = event.agent_tool_rejected
            who = f" by {rejected.rejected_by}" if rejected.rejected_by else ""
            return f"{rejected.tool_name} rejected{who}" + (
                f": {_short(rejected.message, 60)}" if rejected.message else ""
            )
        case "agent_escalation_withdrawn":
            withdrawn = event.agent_escalation_withdrawn
            return f"question withdrawn: {_short(withdrawn.reason)}"
        case "agent_build_paused":
            return f"paused: {_short(event.agent_build_paused.reason)}"
        case "phase_started":
            return f"phase {event.phase_started.phase} started"
        case "phase_completed":
            return f"phase {event.phase_completed.phase} completed"
        case _:
            return event.type


def plain_event_line(event: event_pb2.JobEvent) -> str:
    """An event as one line of plain text: sequence, time of day and what it means."""
    clock = event.time.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S") if event.HasField("time") else "--:--:--"
    return f"{event.sequence:>5}  {clock}  {describe_event(event)}"
