"""Who submitted each plan: ``plans.submitted_by``, the API key owner that created or
started it (NULL with API keys off, and for plans recorded before). The adaptive approval
policy reads it: approvals by a plan's submitter do not count as a person's for trust, and
an agent with too few runs of its own starts from its submitter's record.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Written by hand with plain SQLAlchemy types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = sa.String(200)


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("submitted_by", NAME, nullable=True))
    op.create_index("ix_plans_submitted_by", "plans", ["submitted_by"])


def downgrade() -> None:
    op.drop_index("ix_plans_submitted_by", table_name="plans")
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("submitted_by")
