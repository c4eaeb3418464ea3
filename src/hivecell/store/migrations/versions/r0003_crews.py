"""crews: one goal fanned out to several agents (the document is the crew layer's JSON)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crews",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
    )
    op.create_index("ix_crews_status", "crews", ["status"])
    op.create_index("ix_crews_created_at", "crews", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_crews_created_at", table_name="crews")
    op.drop_index("ix_crews_status", table_name="crews")
    op.drop_table("crews")
