"""Jobs and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revisions spell out their types rather than importing models.py, which moves on: the
# DDL of the store's UTC timestamp type is a plain timezone-aware DateTime.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=255), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("daily_budget_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("agent_brain", sa.String(length=255), nullable=False),
        sa.Column("agent_model", sa.String(length=255), nullable=False),
        sa.Column("agent_config", _JSON, nullable=False),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("outcome_detail", sa.Text(), nullable=False),
        sa.Column("agent_state", sa.String(length=32), nullable=True),
        sa.Column("wake_at", _TIMESTAMP, nullable=True),
        sa.Column("create_time", _TIMESTAMP, nullable=False),
        sa.Column("update_time", _TIMESTAMP, nullable=False),
        sa.Column("end_time", _TIMESTAMP, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'ready', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('completed', 'iteration_limit', 'repetition', "
            "'model_error', 'budget_exceeded', 'cancelled')",
            name=op.f("ck_jobs_outcome"),
        ),
        sa.CheckConstraint(
            "agent_state IS NULL OR agent_state IN ('working', 'sleeping', 'waiting_for_input', "
            "'error', 'budget_exceeded', 'completed')",
            name=op.f("ck_jobs_agent_state"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_jobs_version")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_owner_id_create_time",
        "jobs",
        ["owner_id", sa.literal_column("create_time DESC"), sa.literal_column("job_id DESC")],
    )
    op.create_index(
        "ix_jobs_owner_id_status",
        "jobs",
        ["owner_id", "status", sa.literal_column("create_time DESC"), sa.literal_column("job_id DESC")],
    )
    op.create_index(
        "ix_jobs_create_time",
        "jobs",
        [sa.literal_column("create_time DESC"), sa.literal_column("job_id DESC")],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("resource_id", sa.String(length=255), nullable=False),
        sa.Column("create_time", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "operation", "request_id", name=op.f("pk_idempotency_keys")),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index("ix_jobs_create_time", table_name="jobs")
    op.drop_index("ix_jobs_owner_id_status", table_name="jobs")
    op.drop_index("ix_jobs_owner_id_create_time", table_name="jobs")
    op.drop_table("jobs")
