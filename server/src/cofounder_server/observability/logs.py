"""Structured logs: one event per line, JSON when stderr is not a terminal, with the ids of
whatever the event is about.

The ids travel in context variables: the RPC interceptor binds the call's request id and
method, the call gate its principal, the API the job or escalation the request names, and
the executor the job and runner in each job's task. asyncio copies context variables into
every task it creates, and a value set in a task is invisible to every other task, so an
event carries the ids of the work that logged it and of no other.

What is never logged: tokens or their digests, goals, prompts, model output and tool
contents. Log calls name jobs by id and describe failures by their type and message.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from cofounder_server import jsontext

FIELDS = ("request_id", "method", "principal", "job_id", "escalation_id", "runner_id")
"""Context fields an event carries when they apply."""

request_id: ContextVar[str | None] = ContextVar("cofounder_log_request_id", default=None)
method: ContextVar[str | None] = ContextVar("cofounder_log_method", default=None)
principal: ContextVar[str | None] = ContextVar("cofounder_log_principal", default=None)
job_id: ContextVar[str | None] = ContextVar("cofounder_log_job_id", default=None)
escalation_id: ContextVar[str | None] = ContextVar("cofounder_log_escalation_id", default=None)
runner_id: ContextVar[str | None] = ContextVar("cofounder_log_runner_id", default=None)

_VARS = (request_id, method, principal, job_id, escalation_id, runner_id)

FORMATS = ("auto", "json", "text")

_REQUEST_FIELDS = {"job_id": job_id, "escalation_id": escalation_id}
"""Request message fields bound for the logs of the call that carries them."""


def id_fields(message_type: Descriptor) -> tuple[str, ...]:
    """The fields of ``message_type`` that :func:`bind_ids` binds (computed once per method)."""
    return tuple(name for name in _REQUEST_FIELDS if name in message_type.fields_by_name)


def bind_ids(request: Message, fields: tuple[str, ...]) -> None:
    """Bind the job and escalation ids a request names (``fields`` from :func:`id_fields`)."""
    for name in fields:
        value = getattr(request, name)
        if value:
            _REQUEST_FIELDS[name].set(value[:64])


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (as attributes named as in FIELDS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in zip(FIELDS, _VARS, strict=True):
            setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the context
    fields that are set, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return jsontext.dumps(entry)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [field=value ...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{name}={value}" for name in FIELDS if (value := getattr(record, name, None)))
        if not context:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{context}]{newline}{rest}"


def parse_levels(spec: str) -> dict[str, int]:
    """``"INFO"`` or ``"cofounder_server.executor=debug,root=info"`` as ``{logger: level}``
    (``""`` for the root logger); ``ValueError`` names what is wrong."""
    levels: dict[str, int] = {}
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        name, equals, level = part.rpartition("=")
        if not equals:
            name, level = "root", part
        name = name.strip()
        value = logging.getLevelName(level.strip().upper())
        if not isinstance(value, int) or not name:
            raise ValueError(f"{part!r}: expected LEVEL or LOGGER=LEVEL (DEBUG, INFO, WARNING, ERROR)")
        levels["" if name == "root" else name] = value
    if not levels:
        raise ValueError(f"{spec!r}: no level given")
    return levels


def configure(level: str, log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log event to ``stream`` (stderr) as JSON lines (``json``, or ``auto`` when
    it is not a terminal) or text, at the levels of ``level`` (see :func:`parse_levels`)."""
    stream = stream or sys.stderr
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    levels = parse_levels(level)
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(levels.pop("", logging.INFO))
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
