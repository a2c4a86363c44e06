"""Text for people: how the command line prints results on a terminal.

Scripts get JSON (the command line prints JSON whenever stdout is not a terminal, or with
``--json``); a person gets the fields that are set, as ``name: value`` lines, and lists as
aligned tables with short ids (any unique prefix of an id is accepted back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cofounder.agent.v1 import agent_control_service_pb2 as control_pb2
from cofounder.agent.v1 import escalation_pb2, escalation_service_pb2, event_pb2, job_pb2
from cofounder_client.view import dollars, enum_word

__all__ = [
    "FLEET_HEADER",
    "SHORT_ID",
    "escalation_rows",
    "escalation_watch_lines",
    "fleet_row",
    "format_record",
    "format_table",
    "job_rows",
    "question_lines",
]

SHORT_ID = 8
"""Characters of an id shown in tables."""

_CELL_LIMIT = 60


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, the header first."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[index]) for row in table) for index in range(len(header))]
    return ["  ".join(map(str.ljust, row, widths)).rstrip() for row in table]


def format_record(message: Message) -> list[str]:
    """``message`` as ``name: value`` lines, only the fields that are set; nested messages
    as dotted names, enums as words, money in dollars, times in UTC."""
    return [f"{name}: {value}" for name, value in _fields(message, "")]


def job_rows(jobs: Iterable[job_pb2.Job]) -> list[str]:
    """Jobs as a table: short id, project, status, budget per day, created, goal."""
    return format_table(
        ("JOB", "PROJECT", "STATUS", "BUDGET/DAY", "CREATED", "GOAL"),
        (
            (
                job.job_id[:SHORT_ID],
                job.project_id,
                _enum(job_pb2.JobStatus.Name(job.status))
                + (f" ({_enum(job_pb2.JobOutcome.Name(job.outcome))})" if job.outcome else ""),
                dollars(job.daily_budget_microdollars),
                _time(job.create_time),
                _cell(job.goal),
            )
            for job in jobs
        ),
    )


def escalation_rows(escalations: Iterable[escalation_pb2.Escalation]) -> list[str]:
    """Escalations as a table: short id, job, status, decision, created, question."""
    return format_table(
        ("ESCALATION", "JOB", "STATUS", "DECISION", "CREATED", "QUESTION"),
        (
            (
                escalation.escalation_id[:SHORT_ID],
                escalation.job_id[:SHORT_ID],
                _enum(escalation_pb2.EscalationStatus.Name(escalation.status)),
                escalation.decision or "-",
                _time(escalation.create_time),
                _cell(escalation.problem),
            )
            for escalation in escalations
        ),
    )


def fleet_row(status: job_pb2.JobStatusSnapshot) -> tuple[str, ...]:
    """A job's live status as a row of :data:`FLEET_HEADER` columns."""
    return (
        status.job_id,
        _enum(job_pb2.JobStatus.Name(status.job_status)),
        _enum(job_pb2.AgentState.Name(status.agent_state)),
        f"{status.budget_percent}%" if status.HasField("budget_percent") else "-",
        f"${status.spent_today_microdollars / 1_000_000:.2f}",
        status.wake_time.ToDatetime().strftime("%H:%M:%S") if status.HasField("wake_time") else "-",
        str(len(status.pending_escalation_ids)),
        str(status.latest_event_sequence),
    )


FLEET_HEADER = ("JOB", "STATUS", "AGENT", "BUDGET", "SPENT TODAY", "WAKES", "ESCALATIONS", "SEQ")


def question_lines(escalation: escalation_pb2.Escalation) -> list[str]:
    """An escalation as a person answers it: the question and the numbered options."""
    lines = [f"escalation {escalation.escalation_id} (job {escalation.job_id})"]
    lines.append(f"question: {escalation.problem}")
    lines.extend(f"  tried: {attempt}" for attempt in escalation.attempts)
    for index, option in enumerate(escalation.options, 1):
        line = f"  {index}. {option.value}"
        if option.label and option.label != option.value:
            line += f": {option.label}"
        if option.value == escalation.recommended_action:
            line += "  (recommended)"
        lines.append(line)
        if option.description:
            lines.append(f"     {option.description}")
    return lines


def escalation_watch_lines(message: escalation_service_pb2.WatchEscalationsResponse) -> list[str]:
    """One line per escalation in a ``WatchEscalations`` message."""
    kind = message.WhichOneof("kind")
    if kind == "snapshot":
        return [_escalation_line("pending", escalation) for escalation in message.snapshot.pending]
    if kind == "events":
        return [
            _escalation_line(
                _enum(escalation_service_pb2.EscalationEventKind.Name(event.kind)), event.escalation
            )
            for event in message.events.events
        ]
    return []


def _escalation_line(what: str, escalation: escalation_pb2.Escalation) -> str:
    line = f"{what:<9} {escalation.escalation_id[:SHORT_ID]}  job {escalation.job_id[:SHORT_ID]}  "
    line += _cell(escalation.problem)
    if escalation.decision:
        line += f"  -> {escalation.decision}"
    return line


def _fields(message: Message, prefix: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            pairs.extend(
                (f"{name}.{key}", _scalar(field.message_type.fields_by_name["value"], value[key]))
                for key in sorted(value)
            )
        elif field.is_repeated:
            if field.message_type is None:
                pairs.append((name, ", ".join(_scalar(field, item) for item in value)))
            elif field.message_type.full_name == escalation_pb2.EscalationOption.DESCRIPTOR.full_name:
                pairs.extend((f"{name}[{index}]", _option(option)) for index, option in enumerate(value, 1))
            else:
                for index, item in enumerate(value, 1):
                    pairs.extend(_fields(item, f"{name}[{index}]."))
        elif field.message_type is not None and not _is_leaf(value):
            pairs.extend(_fields(value, f"{name}."))
        else:
            pairs.append((name, _scalar(field, value)))
    return pairs


def _option(option: escalation_pb2.EscalationOption) -> str:
    text = option.value
    if option.label and option.label != option.value:
        text += f": {option.label}"
    return text + (f" ({option.description})" if option.description else "")


def _is_leaf(value: Message) -> bool:
    return isinstance(value, timestamp_pb2.Timestamp | struct_pb2.Struct)


def _scalar(field: FieldDescriptor, value: object) -> str:
    if isinstance(value, timestamp_pb2.Timestamp):
        return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, struct_pb2.Struct):
        return json.dumps(json_format.MessageToDict(value), separators=(",", ":"))
    if field.enum_type is not None and isinstance(value, int):
        return _enum(field.enum_type.values_by_number[value].name)
    if field.name.endswith("_microdollars") and isinstance(value, int):
        return dollars(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _enum(name: str) -> str:
    # Every enum of the API prefixes its values with the type name: JOB_STATUS_RUNNING.
    for prefix in _ENUM_PREFIXES:
        if name.startswith(prefix):
            return enum_word(name, prefix)
    return name.lower()


_ENUM_PREFIXES = tuple(
    descriptor.values_by_number[0].name.removesuffix("UNSPECIFIED")
    for module in (job_pb2, escalation_pb2, escalation_service_pb2, control_pb2, event_pb2)
    for descriptor in module.DESCRIPTOR.enum_types_by_name.values()
)


def _time(timestamp: timestamp_pb2.Timestamp) -> str:
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M") if timestamp.seconds else "-"


def _cell(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _CELL_LIMIT else line[: _CELL_LIMIT - 1] + "…"
