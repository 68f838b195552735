"""Content-hash cache of text embeddings.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "text_embeddings",
        # ModelSettings.cache_key: everything that changes a model's vectors.
        sa.Column("model_key", sa.Text, nullable=False),
        # sha256 of the normalised text's UTF-8 bytes.
        sa.Column("text_hash", sa.LargeBinary, nullable=False),
        # float32 little-endian.
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("model_key", "text_hash"),
    )
    # Float vectors do not compress: EXTERNAL saves the pglz attempt on every wide row.
    op.execute("ALTER TABLE text_embeddings ALTER COLUMN vector SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("text_embeddings")
