"""Scenes and experiments: one row per resource, its spec as proto JSON.

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


def _resource_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Text, primary_key=True),
        # Proto JSON, so definitions can be read and diffed with SQL.
        sa.Column("spec", postgresql.JSONB, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )


def upgrade() -> None:
    _resource_table("scenes")
    _resource_table("experiments")
    # Every Recommend request reads the experiments of its scene.
    op.execute("CREATE INDEX experiments_scene ON experiments ((spec ->> 'scene'))")


def downgrade() -> None:
    op.drop_table("experiments")
    op.drop_table("scenes")
