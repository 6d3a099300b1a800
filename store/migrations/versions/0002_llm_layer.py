"""The LLM layer's tables: configured models, lessons learned, planner runs; and the
adaptive approval policy's decision on each run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Written by hand with plain SQLAlchemy types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)
ID = sa.String(64)
NAME = sa.String(200)
STATUS = sa.String(32)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("approval_decision", JSON, nullable=True))

    op.create_table(
        "model_configs",
        sa.Column("name", NAME, nullable=False),
        sa.Column("capabilities", JSON, nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_model_configs"),
    )

    op.create_table(
        "lessons",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("source", STATUS, nullable=False),
        sa.Column("plan_id", ID, nullable=True),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("agent_id", NAME, nullable=True),
        sa.Column("by", NAME, nullable=True),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("tools", JSON, nullable=False),
        sa.Column("step_kind", STATUS, nullable=True),
        sa.Column("what_wrong", sa.Text(), nullable=False),
        sa.Column("fix", sa.Text(), nullable=False),
        sa.Column("change", JSON, nullable=False),
        sa.Column("times_applied", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lessons"),
    )
    op.create_index("ix_lessons_created_at", "lessons", ["created_at"])
    op.create_index("ix_lessons_plan_id", "lessons", ["plan_id"])
    op.create_index("ix_lessons_agent_id", "lessons", ["agent_id"])

    op.create_table(
        "plan_generations",
        sa.Column("id", NAME, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("agent_id", NAME, nullable=True),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("model", NAME, nullable=False),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("repairs", JSON, nullable=False),
        sa.Column("lessons_applied", JSON, nullable=False),
        sa.Column("plan_id", ID, nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plan_generations"),
    )
    op.create_index("ix_plan_generations_created_at", "plan_generations", ["created_at"])
    op.create_index("ix_plan_generations_agent_id", "plan_generations", ["agent_id"])
    op.create_index("ix_plan_generations_plan_id", "plan_generations", ["plan_id"])


def downgrade() -> None:
    for table in ("plan_generations", "lessons", "model_configs"):
        op.drop_table(table)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("approval_decision")
