"""Job progress counters of produced (embedding) fields.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("texts_embedded", "embedding_cache_hits", "embedding_calls", "embedding_truncations")


def upgrade() -> None:
    for name in COUNTERS:
        op.add_column("jobs", sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    for name in COUNTERS:
        op.drop_column("jobs", name)
