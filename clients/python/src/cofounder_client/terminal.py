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
    "decide_lines",
    "escalation_detail_lines",
    "escalation_rows",
    "escalation_watch_lines",
    "fleet_row",
    "format_record",
    "format_table",
    "is_tool_approval",
    "job_rows",
    "pending_lines",
    "question_lines",
    "schema_summary",
]

SHORT_ID = 8
"""Characters of an id shown in tables."""

_CELL_LIMIT = 60
# A tool call's arguments as shown for review: enough to judge most calls at a glance, the
# rest behind `cofounder escalations get ID --json`.
_ARGUMENT_LINES = 12
_ARGUMENT_LINE_CHARS = 100
# Fewer in a feed, where one call must not push the others off the screen.
_FEED_ARGUMENT_LINES = 6
_SCHEMA_SUMMARY_CHARS = 160


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


def question_lines(
    escalation: escalation_pb2.Escalation, *, argument_lines: int | None = _ARGUMENT_LINES
) -> list[str]:
    """An escalation as a person answers it: the question, a tool call's arguments, the
    numbered options or the kind of answer it takes. ``argument_lines``: how many lines of
    the arguments to show (``None``: all of them, as for approving the call)."""
    lines = [f"escalation {escalation.escalation_id} (job {escalation.job_id})"]
    lines.append(f"question: {escalation.problem}")
    lines.extend(f"  tried: {attempt}" for attempt in escalation.attempts)
    lines.extend(escalation_detail_lines(escalation, argument_lines=argument_lines))
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


def escalation_detail_lines(
    escalation: escalation_pb2.Escalation, *, argument_lines: int | None = _ARGUMENT_LINES
) -> list[str]:
    """What an escalation is about beyond its question: the tool call waiting for approval
    (its tool and pretty-printed arguments, long ones cut short), or the kind of answer an
    open question expects. Empty for a question with options. ``argument_lines``: as for
    :func:`question_lines`."""
    if is_tool_approval(escalation):
        lines = [f"tool: {escalation.tool_name}", "arguments:"]
        lines.extend(f"  {line}" for line in _argument_lines(escalation, argument_lines))
        return lines
    if escalation.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_TEXT:
        limit = f", at most {escalation.answer_max_chars:,} characters" if escalation.answer_max_chars else ""
        return [f"expects: free text{limit}"]
    if escalation.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_VALUE:
        return [f"expects: a JSON value: {schema_summary(escalation.answer_schema_json)}"]
    return []


def decide_lines(escalation: escalation_pb2.Escalation, *, short: bool = True) -> list[str]:
    """The commands that decide a pending escalation (none once it is decided); ``short``
    names it by the prefix tables show."""
    if escalation.status != escalation_pb2.ESCALATION_STATUS_PENDING:
        return []
    name = escalation.escalation_id[:SHORT_ID] if short else escalation.escalation_id
    if is_tool_approval(escalation):
        return [
            f"approve: cofounder escalations approve {name}  [--for-job] [--edit-json JSON]",
            f"reject:  cofounder escalations reject {name} --message TEXT",
        ]
    if escalation.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_VALUE:
        return [f"answer:  cofounder escalations resolve {name} --answer JSON"]
    if escalation.answer_kind == escalation_pb2.ESCALATION_ANSWER_KIND_TEXT:
        return [f"answer:  cofounder escalations resolve {name} --answer TEXT"]
    return [f"answer:  cofounder escalations resolve {name}  [--decision VALUE]"]


def is_tool_approval(escalation: escalation_pb2.Escalation) -> bool:
    """Whether ``escalation`` is a tool call waiting for approval."""
    return escalation.trigger == escalation_pb2.ESCALATION_TRIGGER_TOOL_APPROVAL or escalation.HasField(
        "tool_call"
    )


def _argument_lines(escalation: escalation_pb2.Escalation, limit: int | None) -> list[str]:
    text = escalation.tool_call.arguments_json
    try:
        lines = json.dumps(
            json.loads(text or "{}"), indent=2, sort_keys=True, ensure_ascii=False
        ).splitlines()
    except json.JSONDecodeError:
        lines = [text]  # shown as it came rather than not at all
    if limit is None:
        return lines
    shown = [_clip(line, _ARGUMENT_LINE_CHARS) for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(
            f"… {len(lines) - limit} more lines "
            f"(all of them: cofounder escalations get {escalation.escalation_id[:SHORT_ID]} --json)"
        )
    return shown


def schema_summary(schema_json: str) -> str:
    """A JSON Schema in a few words, e.g. ``object {replicas: integer (required), region: one
    of "eu", "us"}``."""
    try:
        schema = json.loads(schema_json) if schema_json else {}
    except json.JSONDecodeError:
        return _clip(schema_json, _SCHEMA_SUMMARY_CHARS)
    return _clip(_describe_schema(schema, depth=0), _SCHEMA_SUMMARY_CHARS)


def _describe_schema(schema: object, *, depth: int) -> str:
    if not isinstance(schema, dict) or not schema:
        return "any JSON value"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "one of " + ", ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    name = " or ".join(map(str, kind)) if isinstance(kind, list) else str(kind or "any JSON value")
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties and depth < 2:
        listed = schema.get("required")
        required = {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else set()
        fields = ", ".join(
            f"{key}: {_describe_schema(value, depth=depth + 1)}" + (" (required)" if key in required else "")
            for key, value in properties.items()
        )
        return f"{name if kind else 'object'} {{{fields}}}"
    items = schema.get("items")
    if kind == "array" and isinstance(items, dict) and depth < 2:
        return f"array of {_describe_schema(items, depth=depth + 1)}"
    return name


def escalation_watch_lines(message: escalation_service_pb2.WatchEscalationsResponse) -> list[str]:
    """One line per escalation in a ``WatchEscalations`` message; a pending one is followed
    by what it is about (a tool call, the answer it expects) and the commands that decide it."""
    kind = message.WhichOneof("kind")
    if kind == "snapshot":
        return [line for escalation in message.snapshot.pending for line in _watched("pending", escalation)]
    if kind == "events":
        return [
            line
            for event in message.events.events
            for line in _watched(
                _enum(escalation_service_pb2.EscalationEventKind.Name(event.kind)), event.escalation
            )
        ]
    return []


def pending_lines(escalations: Iterable[escalation_pb2.Escalation]) -> list[str]:
    """Below a table of escalations: for each pending one, what it expects and the commands
    that decide it (nothing when none is pending)."""
    lines: list[str] = []
    for escalation in escalations:
        details = [
            *(line for line in escalation_detail_lines(escalation) if line.startswith("expects: ")),
            *decide_lines(escalation),
        ]
        if details:
            lines.append(f"  {escalation.escalation_id[:SHORT_ID]}  {details[0]}")
            lines.extend(f"  {'':<{SHORT_ID}}  {line}" for line in details[1:])
    return ["", "to decide:", *lines] if lines else []


def _watched(what: str, escalation: escalation_pb2.Escalation) -> list[str]:
    lines = [_escalation_line(what, escalation)]
    if escalation.status == escalation_pb2.ESCALATION_STATUS_PENDING:
        indent = " " * 10
        lines.extend(
            indent + line for line in escalation_detail_lines(escalation, argument_lines=_FEED_ARGUMENT_LINES)
        )
        lines.extend(indent + line for line in decide_lines(escalation))
    return lines


def _escalation_line(what: str, escalation: escalation_pb2.Escalation) -> str:
    line = f"{what:<9} {escalation.escalation_id[:SHORT_ID]}  job {escalation.job_id[:SHORT_ID]}  "
    line += _cell(escalation.problem)
    if escalation.decision:
        line += f"  -> {escalation.decision}"
    elif escalation.answer:
        line += f"  -> {_cell(escalation.answer)}"
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
    return _clip(" ".join(text.split()), _CELL_LIMIT)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
