"""Escalations: the question an agent raised, its options, deadline and decision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelt out rather than imported from models.py (see 0001).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_OUTCOMES = "'completed', 'iteration_limit', 'repetition', 'model_error', 'budget_exceeded', 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "escalations",
        sa.Column("escalation_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("attempts", _JSON, nullable=False),
        sa.Column("recommended_action", sa.Text(), nullable=False),
        sa.Column("options", _JSON, nullable=False),
        sa.Column("error_signature", sa.Text(), nullable=False),
        sa.Column("tool_call_id", sa.String(length=255), nullable=False),
        sa.Column("tool_name", sa.String(length=255), nullable=False),
        sa.Column("deadline", _TIMESTAMP, nullable=True),
        sa.Column("default_option", sa.Text(), nullable=False),
        sa.Column("create_time", _TIMESTAMP, nullable=False),
        sa.Column("resolve_time", _TIMESTAMP, nullable=True),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("guidance", sa.Text(), nullable=False),
        sa.Column("resolved_by", sa.String(length=255), nullable=False),
        sa.Column("decision_source", sa.String(length=16), nullable=True),
        sa.Column("resolved_via_service", sa.String(length=255), nullable=False),
        sa.Column("delivered_time", _TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'resolved', 'withdrawn', 'expired')", name=op.f("ck_escalations_state")
        ),
        sa.CheckConstraint(
            "trigger IN ('repeated_error', 'unretryable_error', 'agent_question')",
            name=op.f("ck_escalations_trigger"),
        ),
        sa.CheckConstraint(
            "decision_source IS NULL OR decision_source IN ('person', 'service', 'deadline')",
            name=op.f("ck_escalations_decision_source"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_escalations_job_id_jobs")),
        sa.PrimaryKeyConstraint("escalation_id", name=op.f("pk_escalations")),
    )
    op.create_index(
        "ix_escalations_owner_id_create_time",
        "escalations",
        ["owner_id", sa.literal_column("create_time DESC"), sa.literal_column("escalation_id DESC")],
    )
    op.create_index(
        "ix_escalations_job_id_create_time",
        "escalations",
        ["job_id", sa.literal_column("create_time DESC"), sa.literal_column("escalation_id DESC")],
    )
    op.create_index("ix_escalations_state_deadline", "escalations", ["state", "deadline"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pending_escalations", _JSON, nullable=False, server_default="[]"))
        batch.drop_constraint(op.f("ck_jobs_outcome"), type_="check")
        batch.create_check_constraint(
            "outcome", f"outcome IS NULL OR outcome IN ({_OUTCOMES}, 'escalation_limit')"
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("pending_escalations", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_outcome"), type_="check")
        batch.create_check_constraint("outcome", f"outcome IS NULL OR outcome IN ({_OUTCOMES})")
        batch.drop_column("pending_escalations")
    op.drop_index("ix_escalations_state_deadline", table_name="escalations")
    op.drop_index("ix_escalations_job_id_create_time", table_name="escalations")
    op.drop_index("ix_escalations_owner_id_create_time", table_name="escalations")
    op.drop_table("escalations")
