"""A draft's approval: a person may approve a plan before it is executed; the approval
names the version and digest it saw, and the run started from the draft counts it only
if the document is still that one. Each run keeps the version and digest its approval saw.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("draft_approval", JSON, nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("approved_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("approved_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("approved_digest")
        batch.drop_column("approved_version")
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("draft_approval")
