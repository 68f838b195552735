"""Why a view's recurring schedule could not fire, and when.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "settings", sa.Column("schedule_error", sa.Text, nullable=False, server_default="")
    )
    op.add_column("settings", sa.Column("schedule_error_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("settings", "schedule_error_time")
    op.drop_column("settings", "schedule_error")
