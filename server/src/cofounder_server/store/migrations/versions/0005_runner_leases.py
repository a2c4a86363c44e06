"""Runner leases: one lease per executor process instead of one per job (jobs keep only
the runner's id).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runners",
        sa.Column("runner_id", sa.String(length=64), nullable=False),
        sa.Column("lease_expires_at", _TIMESTAMP, nullable=False),
        sa.Column("start_time", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("runner_id", name=op.f("pk_runners")),
    )
    # Runners that hold jobs now keep them until their per-job leases would have run out.
    op.execute(
        "INSERT INTO runners (runner_id, lease_expires_at, start_time) "
        "SELECT runner_id, MAX(lease_expires_at), MIN(update_time) FROM jobs "
        "WHERE runner_id IS NOT NULL AND lease_expires_at IS NOT NULL GROUP BY runner_id"
    )
    op.create_index("ix_jobs_update_time", "jobs", ["update_time"])
    op.create_index("ix_jobs_runner_id_status", "jobs", ["runner_id", "status"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", _TIMESTAMP, nullable=True))
    # Every runner's jobs keep its lease.
    op.execute(
        "UPDATE jobs SET lease_expires_at = "
        "(SELECT lease_expires_at FROM runners WHERE runners.runner_id = jobs.runner_id)"
    )
    op.drop_index("ix_jobs_runner_id_status", table_name="jobs")
    op.drop_index("ix_jobs_update_time", table_name="jobs")
    op.drop_table("runners")
