"""The size of each job's conversation beside its checkpoint: what resuming its agent costs
in memory, known before its conversation is read.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Conversations checkpointed before this revision count as small until their next
    # iteration records their size.
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("conversation_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("conversation_bytes")
