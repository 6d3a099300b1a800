"""Which provider answers a model configured in the store (``anthropic`` or ``ollama``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_configs") as batch:
        batch.add_column(
            sa.Column("provider", sa.String(length=32), nullable=False, server_default="anthropic")
        )


def downgrade() -> None:
    with op.batch_alter_table("model_configs") as batch:
        batch.drop_column("provider")
