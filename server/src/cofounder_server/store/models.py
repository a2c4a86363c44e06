"""SQLAlchemy table models. Schema changes go through a new Alembic revision in ``migrations``.

These classes stay inside the store package: repositories return the frozen domain
dataclasses instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cofounder_server.domain.escalations import (
    AnswerKind,
    DecisionSource,
    EscalationStatus,
    EscalationTrigger,
    ToolExecutionState,
)
from cofounder_server.domain.events import EscalationEventKind
from cofounder_server.domain.model import AgentState, JobOutcome, JobStatus

# Deterministic constraint names: Alembic needs names to drop or alter constraints later,
# and SQLite batch migrations rebuild tables by them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zone type, so values are stored
    as naive UTC text and get their UTC zone back on load. Naive input is refused, since
    its meaning would depend on the machine's local zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not UTC:  # most values already are (the clock's), and astimezone is not free
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r}: the store needs timezone-aware times")
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")
"""JSON text on SQLite, ``jsonb`` on PostgreSQL (indexable for later label queries)."""


def _in_values(
    column: str,
    values: type[
        JobStatus
        | JobOutcome
        | AgentState
        | EscalationEventKind
        | EscalationStatus
        | EscalationTrigger
        | DecisionSource
        | AnswerKind
        | ToolExecutionState
    ],
) -> str:
    return f"{column} IN ({', '.join(repr(member.value) for member in values)})"


class Base(DeclarativeBase):
    """Declarative base of every table; its ``metadata`` is Alembic's autogenerate target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONDocument}


def table_of(model: type[Base]) -> Table:
    """The model's Core table (for Core statements: an executemany without the ORM's
    bulk-insert bookkeeping, or SQL built by hand)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class JobRow(Base):
    """A job: what was asked, its lifecycle, and the last known live agent state."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    goal: Mapped[str] = mapped_column(Text)
    daily_budget_microdollars: Mapped[int] = mapped_column(BigInteger)
    agent_brain: Mapped[str] = mapped_column(String(255))
    agent_model: Mapped[str] = mapped_column(String(255))
    agent_config: Mapped[dict[str, Any]]
    labels: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(32))
    outcome_detail: Mapped[str] = mapped_column(Text)
    agent_state: Mapped[str | None] = mapped_column(String(32))
    wake_at: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    # The escalations the agent waits on (ids, oldest first), kept with the job so every
    # change of them is a change of the job: its summary in Redis follows.
    pending_escalations: Mapped[list[str]] = mapped_column(JSONDocument)
    # Which executor process runs the job (a row of ``runners``, whose lease says whether it
    # is alive). A job of a runner whose lease expired is claimed by another process.
    runner_id: Mapped[str | None] = mapped_column(String(64))
    # Starts at 1 and grows by one on every change: cached copies (Redis, event payloads)
    # are ordered by it, and the mapper uses it to refuse a flush over a concurrent change.
    version: Mapped[int] = mapped_column(Integer)
    # The job's place in the fleet feed: the sequence (counter ``fleet``) of its newest
    # change, stamped in the change's transaction. The feed is coalesced: a job appears once,
    # at its newest change, so resuming after a cursor reads the jobs whose value is above it.
    fleet_sequence: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # The job's tool approval policy (``ToolApprovalPolicy.to_json``), NULL: none; and the
    # tools a reviewer approved for the rest of the job, in the order approved.
    tool_approval: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    approved_tools: Mapped[list[str]] = mapped_column(JSONDocument, server_default="[]")

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        CheckConstraint(_in_values("status", JobStatus), name="status"),
        CheckConstraint(f"outcome IS NULL OR {_in_values('outcome', JobOutcome)}", name="outcome"),
        CheckConstraint(
            f"agent_state IS NULL OR {_in_values('agent_state', AgentState)}", name="agent_state"
        ),
        CheckConstraint("version >= 1", name="version"),
    )


# Listing is newest first by (create_time, job_id), per owner (optionally by status) or,
# for operators, across owners.
Index("ix_jobs_owner_id_create_time", JobRow.owner_id, JobRow.create_time.desc(), JobRow.job_id.desc())
Index(
    "ix_jobs_owner_id_status",
    JobRow.owner_id,
    JobRow.status,
    JobRow.create_time.desc(),
    JobRow.job_id.desc(),
)
Index("ix_jobs_create_time", JobRow.create_time.desc(), JobRow.job_id.desc())
# The executor claims queued (and orphaned running) jobs oldest first.
Index("ix_jobs_status_create_time", JobRow.status, JobRow.create_time, JobRow.job_id)


# The executor's sweep reads the jobs changed since its last turn.
Index("ix_jobs_update_time", JobRow.update_time)
# The fleet feed after a cursor, across owners (operators, the feed's own catch-up) or one owner's.
Index("ix_jobs_fleet_sequence", JobRow.fleet_sequence)
Index("ix_jobs_owner_id_fleet_sequence", JobRow.owner_id, JobRow.fleet_sequence)
# A runner's running jobs: taken over together when its lease expires, released together.
Index("ix_jobs_runner_id_status", JobRow.runner_id, JobRow.status)


class RunnerRow(Base):
    """An executor process and its lease: while ``lease_expires_at`` is in the future, the
    running jobs whose ``runner_id`` names it are its own. One row per process, renewed by
    one UPDATE whatever the number of jobs it holds."""

    __tablename__ = "runners"

    runner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_expires_at: Mapped[datetime]
    start_time: Mapped[datetime]


class IdempotencyKeyRow(Base):
    """A retried mutation's ``request_id``: which request (by fingerprint) made what resource."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    resource_id: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime]


class EventCounterRow(Base):
    """Where an event stream stands: one row per job log (``job:{id}``), one for the
    escalation feed (``escalations``) and one for the fleet feed (``fleet``).

    Appends increment ``last_sequence`` in the transaction that inserts the events, so the
    row lock (PostgreSQL) or the write lock (SQLite) hands out sequences without holes, in
    commit order, across replicas. Events up to ``pruned_through`` may have been deleted by
    retention; a cursor older than that is out of range.
    """

    __tablename__ = "event_counters"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    pruned_through: Mapped[int] = mapped_column(BigInteger)


class JobEventRow(Base):
    """One event of a job's log. ``payload`` is the typed payload's JSON form for ``type``."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime]
    payload: Mapped[dict[str, Any]]


class EscalationEventRow(Base):
    """One entry of the escalation feed: the escalation as it stood after the event."""

    __tablename__ = "escalation_events"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    escalation_id: Mapped[str] = mapped_column(String(36))
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"))
    owner_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime]
    escalation: Mapped[dict[str, Any]]

    __table_args__ = (CheckConstraint(_in_values("kind", EscalationEventKind), name="kind"),)


# A watcher reads its owner's (optionally one job's) feed in order; the pending snapshot and
# retention look up an escalation's newest entry.
Index("ix_escalation_events_owner_id_sequence", EscalationEventRow.owner_id, EscalationEventRow.sequence)
Index("ix_escalation_events_job_id_sequence", EscalationEventRow.job_id, EscalationEventRow.sequence)
Index(
    "ix_escalation_events_escalation_id_sequence",
    EscalationEventRow.escalation_id,
    EscalationEventRow.sequence,
)


class EscalationRow(Base):
    """An escalation as it stands now: the question, its options, and who decided what.

    Resolving is one conditional ``UPDATE ... WHERE state = 'pending'``, so of concurrent
    resolves on any replicas exactly one wins. ``delivered_time`` is set in the transaction
    that tells the agent the decision, so it is told once.
    """

    __tablename__ = "escalations"

    escalation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"))
    owner_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))
    problem: Mapped[str] = mapped_column(Text)
    attempts: Mapped[list[str]] = mapped_column(JSONDocument)
    recommended_action: Mapped[str] = mapped_column(Text)
    options: Mapped[list[dict[str, str]]] = mapped_column(JSONDocument)
    error_signature: Mapped[str] = mapped_column(Text)
    tool_call_id: Mapped[str] = mapped_column(String(255))
    tool_name: Mapped[str] = mapped_column(String(255))
    deadline: Mapped[datetime | None]
    default_option: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime]
    resolve_time: Mapped[datetime | None]
    decision: Mapped[str] = mapped_column(Text)
    guidance: Mapped[str] = mapped_column(Text)
    resolved_by: Mapped[str] = mapped_column(String(255))
    decision_source: Mapped[str | None] = mapped_column(String(16))
    resolved_via_service: Mapped[str] = mapped_column(String(255))
    delivered_time: Mapped[datetime | None]
    # A tool approval's call: the agent's arguments, their digest, the tool's input schema,
    # and the reviewer's edit of them. Questions' answers beyond options: the kind, the
    # schema a value must match, the longest text, and the answer given.
    arguments_json: Mapped[str] = mapped_column(Text, server_default="")
    arguments_digest: Mapped[str] = mapped_column(String(64), server_default="")
    input_schema_json: Mapped[str] = mapped_column(Text, server_default="")
    approved_arguments_json: Mapped[str] = mapped_column(Text, server_default="")
    answer_kind: Mapped[str] = mapped_column(String(16), server_default=AnswerKind.OPTION.value)
    answer_schema_json: Mapped[str] = mapped_column(Text, server_default="")
    answer_max_chars: Mapped[int] = mapped_column(Integer, server_default="0")
    answer: Mapped[str] = mapped_column(Text, server_default="")

    __table_args__ = (
        CheckConstraint(_in_values("state", EscalationStatus), name="state"),
        CheckConstraint(_in_values("trigger", EscalationTrigger), name="trigger"),
        CheckConstraint(
            f"decision_source IS NULL OR {_in_values('decision_source', DecisionSource)}",
            name="decision_source",
        ),
        CheckConstraint(_in_values("answer_kind", AnswerKind), name="answer_kind"),
    )


# Listing is newest first per owner (optionally one job's); the deadline sweep looks for
# the earliest pending deadline.
Index(
    "ix_escalations_owner_id_create_time",
    EscalationRow.owner_id,
    EscalationRow.create_time.desc(),
    EscalationRow.escalation_id.desc(),
)
Index(
    "ix_escalations_job_id_create_time",
    EscalationRow.job_id,
    EscalationRow.create_time.desc(),
    EscalationRow.escalation_id.desc(),
)
Index("ix_escalations_state_deadline", EscalationRow.state, EscalationRow.deadline)


class ToolExecutionRow(Base):
    """The execution of an approved tool call: ``approved`` (not started), ``running`` (a
    process took it; if it died, the call may or may not have completed), ``done`` (its
    result kept). Taking a call from ``approved`` to ``running`` is one conditional
    ``UPDATE``, committed before the tool runs: a call runs at most once, whatever restarts
    and replicas do."""

    __tablename__ = "tool_executions"

    escalation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("escalations.escalation_id"), primary_key=True
    )
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"))
    call_id: Mapped[str] = mapped_column(String(255))
    tool_name: Mapped[str] = mapped_column(String(255))
    arguments_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    result: Mapped[str] = mapped_column(Text)
    is_error: Mapped[bool] = mapped_column(Boolean)
    runner_id: Mapped[str | None] = mapped_column(String(64))
    update_time: Mapped[datetime]

    __table_args__ = (CheckConstraint(_in_values("state", ToolExecutionState), name="state"),)


Index("ix_tool_executions_job_id", ToolExecutionRow.job_id)


class UsageLedgerRow(Base):
    """One model call: tokens, model and its price. Spend per budget window is their sum.

    ``iteration`` numbers the job's model calls from 1, so a call is recorded at most once;
    ``window_start`` is the UTC midnight that opened the budget window the call counts in.
    """

    __tablename__ = "usage_ledger"

    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"), primary_key=True)
    iteration: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    window_start: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_microdollars: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime]


Index("ix_usage_ledger_job_id_window_start", UsageLedgerRow.job_id, UsageLedgerRow.window_start)


class BudgetAdjustmentRow(Base):
    """A top-up of one budget window (WakeAgent); ``request_id`` makes a retry apply once."""

    __tablename__ = "budget_adjustments"

    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime]
    amount_microdollars: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime]


class CheckpointRow(Base):
    """Where a job's agent loop stands after its last completed iteration.

    The conversation itself is in :class:`CheckpointMessageRow` (append-only); this row says
    how many of those messages count, so saving costs the same whatever the history length.
    ``state`` holds the loop's counters and guards as JSON.
    """

    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"), primary_key=True)
    iteration: Mapped[int] = mapped_column(BigInteger)
    message_count: Mapped[int] = mapped_column(BigInteger)
    # What the conversation's messages weigh (Message.size summed): what resuming the agent
    # costs in memory, known before the messages are read.
    conversation_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    state: Mapped[dict[str, Any]]
    update_time: Mapped[datetime]


class CheckpointMessageRow(Base):
    """One message of a job's conversation, at ``position`` 0, 1, 2, ..."""

    __tablename__ = "checkpoint_messages"

    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.job_id"), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    message: Mapped[dict[str, Any]]
