"""The fleet feed: each job's place in one commit-ordered feed of job changes (WatchJobs).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fleet_sequence", sa.BigInteger(), nullable=False, server_default="0"))
    # Jobs stored before this revision join the feed in the order they last changed, so a
    # watcher resuming from 0 sees them like any other.
    op.execute(
        "UPDATE jobs SET fleet_sequence = (SELECT numbered.position FROM "
        "(SELECT job_id, ROW_NUMBER() OVER (ORDER BY update_time, job_id) AS position FROM jobs) "
        "AS numbered WHERE numbered.job_id = jobs.job_id)"
    )
    op.execute(
        "INSERT INTO event_counters (stream, last_sequence, pruned_through) "
        "SELECT 'fleet', COUNT(*), 0 FROM jobs"
    )
    op.create_index("ix_jobs_fleet_sequence", "jobs", ["fleet_sequence"])
    op.create_index("ix_jobs_owner_id_fleet_sequence", "jobs", ["owner_id", "fleet_sequence"])


def downgrade() -> None:
    op.execute("DELETE FROM event_counters WHERE stream = 'fleet'")
    op.drop_index("ix_jobs_owner_id_fleet_sequence", table_name="jobs")
    op.drop_index("ix_jobs_fleet_sequence", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fleet_sequence")
