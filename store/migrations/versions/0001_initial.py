"""The store's first schema: plans, versions, runs, step results, logs, audit, blobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Written by hand with plain SQLAlchemy types (no imports from the application), so it
keeps working whatever the models become later. ``tests/store/test_store.py`` checks that the
models and this schema agree.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TS = sa.DateTime(timezone=True)
ID = sa.String(64)
NAME = sa.String(200)
STATUS = sa.String(32)


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["plan_id", "run_id"],
        ["runs.plan_id", "runs.run_id"],
        name=f"fk_{table}_plan_id_runs",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", ID, nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("agent_id", NAME, nullable=True),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("last_run_id", ID, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("last_run_created_at", TS, nullable=True),
        sa.Column("last_snapshot_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
    )
    op.create_index("ix_plans_agent_id", "plans", ["agent_id"])
    op.create_index("ix_plans_status", "plans", ["status"])
    op.create_index("ix_plans_updated_at", "plans", ["updated_at"])

    op.create_table(
        "plan_versions",
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("by", NAME, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("change", sa.Text(), nullable=False),
        sa.Column("diff", JSON, nullable=False),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("document", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name="fk_plan_versions_plan_id_plans", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("plan_id", "version", name="pk_plan_versions"),
    )

    op.create_table(
        "runs",
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("workflow_id", NAME, nullable=False),
        sa.Column("execution_run_id", ID, nullable=True),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", ID, nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("waiting", JSON, nullable=False),
        sa.Column("approved_by", NAME, nullable=True),
        sa.Column("approval_note", sa.Text(), nullable=True),
        sa.Column("stopping", sa.Text(), nullable=True),
        sa.Column("paused_by", NAME, nullable=True),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("feedback", JSON, nullable=False),
        sa.Column("resumed_by", NAME, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("logs_total", sa.Integer(), nullable=False),
        sa.Column("audit_total", sa.Integer(), nullable=False),
        sa.Column("snapshot_seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name="fk_runs_plan_id_plans", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("plan_id", "run_id", name="pk_runs"),
    )
    op.create_index("ix_runs_status", "runs", ["status"])

    op.create_table(
        "step_results",
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("step_id", ID, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("output_ref", sa.String(400), nullable=True),
        sa.Column("skip_reason", STATUS, nullable=True),
        sa.Column("skip_detail", sa.Text(), nullable=True),
        sa.Column("carried", sa.Boolean(), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("snapshot_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        _run_fk("step_results"),
        sa.PrimaryKeyConstraint("plan_id", "run_id", "step_id", name="pk_step_results"),
    )
    op.create_index("ix_step_results_output_ref", "step_results", ["output_ref"])

    op.create_table(
        "logs",
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        _run_fk("logs"),
        sa.PrimaryKeyConstraint("plan_id", "run_id", "seq", name="pk_logs"),
    )
    op.create_index("ix_logs_plan_id_at", "logs", ["plan_id", "at"])

    op.create_table(
        "audit",
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("by", NAME, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        _run_fk("audit"),
        sa.PrimaryKeyConstraint("plan_id", "run_id", "seq", name="pk_audit"),
    )
    op.create_index("ix_audit_plan_id_at", "audit", ["plan_id", "at"])

    op.create_table(
        "blobs",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_blobs"),
    )


def downgrade() -> None:
    for table in ("blobs", "audit", "logs", "step_results", "runs", "plan_versions", "plans"):
        op.drop_table(table)
