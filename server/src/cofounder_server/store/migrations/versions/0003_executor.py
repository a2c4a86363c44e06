"""The agent executor: usage ledger, budget top-ups, checkpoints, job leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelt out rather than imported from models.py (see 0001).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("runner_id", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("lease_expires_at", _TIMESTAMP, nullable=True))
    op.create_index("ix_jobs_status_create_time", "jobs", ["status", "create_time", "job_id"])
    op.create_table(
        "usage_ledger",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("iteration", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("window_start", _TIMESTAMP, nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("time", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_usage_ledger_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "iteration", name=op.f("pk_usage_ledger")),
    )
    op.create_index("ix_usage_ledger_job_id_window_start", "usage_ledger", ["job_id", "window_start"])
    op.create_table(
        "budget_adjustments",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("window_start", _TIMESTAMP, nullable=False),
        sa.Column("amount_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("time", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_budget_adjustments_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "request_id", name=op.f("pk_budget_adjustments")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("iteration", sa.BigInteger(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("state", _JSON, nullable=False),
        sa.Column("update_time", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_checkpoints_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "checkpoint_messages",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("message", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_checkpoint_messages_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "position", name=op.f("pk_checkpoint_messages")),
    )


def downgrade() -> None:
    op.drop_table("checkpoint_messages")
    op.drop_table("checkpoints")
    op.drop_table("budget_adjustments")
    op.drop_index("ix_usage_ledger_job_id_window_start", table_name="usage_ledger")
    op.drop_table("usage_ledger")
    op.drop_index("ix_jobs_status_create_time", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("runner_id")
