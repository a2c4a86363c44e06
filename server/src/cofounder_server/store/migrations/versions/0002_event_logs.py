"""Event logs: per-job events, the escalation feed, and their sequence counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelt out rather than imported from models.py (see 0001).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_counters",
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_event_counters")),
    )
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("time", _TIMESTAMP, nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_job_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", "sequence", name=op.f("pk_job_events")),
    )
    op.create_table(
        "escalation_events",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("escalation_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("time", _TIMESTAMP, nullable=False),
        sa.Column("escalation", _JSON, nullable=False),
        sa.CheckConstraint(
            "kind IN ('raised', 'resolved', 'withdrawn')", name=op.f("ck_escalation_events_kind")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_escalation_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_escalation_events")),
    )
    op.create_index("ix_escalation_events_owner_id_sequence", "escalation_events", ["owner_id", "sequence"])
    op.create_index("ix_escalation_events_job_id_sequence", "escalation_events", ["job_id", "sequence"])
    op.create_index(
        "ix_escalation_events_escalation_id_sequence", "escalation_events", ["escalation_id", "sequence"]
    )


def downgrade() -> None:
    op.drop_index("ix_escalation_events_escalation_id_sequence", table_name="escalation_events")
    op.drop_index("ix_escalation_events_job_id_sequence", table_name="escalation_events")
    op.drop_index("ix_escalation_events_owner_id_sequence", table_name="escalation_events")
    op.drop_table("escalation_events")
    op.drop_table("job_events")
    op.drop_table("event_counters")
