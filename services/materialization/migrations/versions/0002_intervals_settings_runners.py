"""Data intervals, materialization settings, and job ownership for multi-replica runners.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column("jobs", sa.Column("runner_id", sa.Text, nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("heartbeat_time", sa.DateTime(timezone=True)))
    op.add_column("jobs", sa.Column("publish_partition", sa.Text))
    op.add_column("jobs", sa.Column("publish_mode", sa.Text))
    op.add_column("jobs", sa.Column("publish_transform", sa.Boolean))
    op.create_index("jobs_queue", "jobs", ["state", "create_time"])
    op.create_table(
        "data_intervals",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("feature_view", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("store", sa.Text, primary_key=True),
        sa.Column("start_time", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "settings",
        sa.Column("project", sa.Text, primary_key=True),
        sa.Column("feature_view", sa.Text, primary_key=True),
        sa.Column("offline_enabled", sa.Boolean, nullable=False),
        sa.Column("online_enabled", sa.Boolean, nullable=False),
        sa.Column("frequency", sa.Text),
        sa.Column("interval", sa.Integer),
        sa.Column("recurrence_start", sa.DateTime(timezone=True)),
        sa.Column("source_delay_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("last_trigger_time", sa.DateTime(timezone=True)),
        sa.Column("etag", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("data_intervals")
    op.drop_index("jobs_queue", "jobs")
    for column in (
        "publish_transform",
        "publish_mode",
        "publish_partition",
        "heartbeat_time",
        "runner_id",
        "cancel_requested",
    ):
        op.drop_column("jobs", column)
