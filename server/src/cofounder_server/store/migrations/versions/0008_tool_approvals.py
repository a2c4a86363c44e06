"""Tool approvals and answers beyond options: the job's approval policy and the tools
approved for the rest of it, the call a tool approval is about and the answer given, and
the durable state of each approved call's single execution.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelt out rather than imported from models.py (see 0001).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_OLD_TRIGGERS = "trigger IN ('repeated_error', 'unretryable_error', 'agent_question')"
_TRIGGERS = "trigger IN ('repeated_error', 'unretryable_error', 'agent_question', 'tool_approval')"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tool_approval", _JSON, nullable=True))
        batch.add_column(sa.Column("approved_tools", _JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("escalations") as batch:
        batch.drop_constraint(op.f("ck_escalations_trigger"), type_="check")
        batch.create_check_constraint(op.f("ck_escalations_trigger"), _TRIGGERS)
        batch.add_column(sa.Column("arguments_json", sa.Text(), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("arguments_digest", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("input_schema_json", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("approved_arguments_json", sa.Text(), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("answer_kind", sa.String(length=16), nullable=False, server_default="option")
        )
        batch.add_column(sa.Column("answer_schema_json", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("answer_max_chars", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("answer", sa.Text(), nullable=False, server_default=""))
        batch.create_check_constraint(
            op.f("ck_escalations_answer_kind"), "answer_kind IN ('option', 'text', 'value')"
        )
    op.create_table(
        "tool_executions",
        sa.Column("escalation_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("call_id", sa.String(length=255), nullable=False),
        sa.Column("tool_name", sa.String(length=255), nullable=False),
        sa.Column("arguments_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("runner_id", sa.String(length=64), nullable=True),
        sa.Column("update_time", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("state IN ('approved', 'running', 'done')", name=op.f("ck_tool_executions_state")),
        sa.ForeignKeyConstraint(
            ["escalation_id"],
            ["escalations.escalation_id"],
            name=op.f("fk_tool_executions_escalation_id_escalations"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_tool_executions_job_id_jobs")),
        sa.PrimaryKeyConstraint("escalation_id", name=op.f("pk_tool_executions")),
    )
    op.create_index("ix_tool_executions_job_id", "tool_executions", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_tool_executions_job_id", table_name="tool_executions")
    op.drop_table("tool_executions")
    with op.batch_alter_table("escalations") as batch:
        batch.drop_constraint(op.f("ck_escalations_answer_kind"), type_="check")
        for column in (
            "answer",
            "answer_max_chars",
            "answer_schema_json",
            "answer_kind",
            "approved_arguments_json",
            "input_schema_json",
            "arguments_digest",
            "arguments_json",
        ):
            batch.drop_column(column)
        batch.drop_constraint(op.f("ck_escalations_trigger"), type_="check")
        batch.create_check_constraint(op.f("ck_escalations_trigger"), _OLD_TRIGGERS)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("approved_tools")
        batch.drop_column("tool_approval")
