"""Registry resources: one row per version of each definition.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE revision_seq")
    op.create_table(
        "resources",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("resource_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("spec", postgresql.JSONB, nullable=False),
        sa.Column("refs", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        # Global, increasing on every write: readers detect changes with one max() query.
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("resources_refs", "resources", ["refs"], postgresql_using="gin")
    op.create_index("resources_kind", "resources", ["kind", "project", "resource_id"])


def downgrade() -> None:
    op.drop_table("resources")
    op.execute("DROP SEQUENCE revision_seq")
