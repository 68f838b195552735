"""Helpers for tests that materialize through the real services: a one-view project over a
Parquet source, and jobs watched to their end."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from recstack.common.v1 import value_pb2
from recstack.materialization.v1 import job_pb2
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import data_source_pb2, entity_pb2, feature_view_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb

VT = value_pb2.ValueType


def register_clicks(registry, project: str, source: Path) -> str:
    """Entity `user`, Parquet source `events` (event time `ts`) and the offline BATCH view
    `clicks` (user_id, clicks) in `project`; the view's resource name."""
    parent = f"projects/{project}"
    field = feature_view_pb2.FeatureField
    registry.Apply(
        rpb.ApplyRequest(
            parent=parent,
            definitions=[
                rpb.Definition(
                    id="user",
                    entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
                ),
                rpb.Definition(
                    id="events",
                    data_source=data_source_pb2.DataSource(
                        file=data_source_pb2.FileSource(
                            path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                        ),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id="clicks",
                    feature_view=feature_view_pb2.FeatureView(
                        entity="user",
                        source="events",
                        type=feature_view_pb2.FeatureView.TYPE_BATCH,
                        offline_enabled=True,
                        fields=[
                            field(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                            field(name="clicks", value_type=VT.VALUE_TYPE_DOUBLE),
                        ],
                    ),
                ),
            ],
        )
    )
    return f"{parent}/featureViews/clicks"


def wait_job(materialization, name: str, timeout: float = 60) -> job_pb2.Job:
    """The job as WatchJob last reported it, once its stream ends (the job has ended)."""
    last = None
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=name), timeout=timeout):
        last = update.job
    return last


def backfill(
    materialization,
    view: str,
    start: datetime | None = None,
    end: datetime | None = None,
    statuses=(),
) -> list[job_pb2.Job]:
    """Backfill `view` over [start, end) (either may be open) for `statuses`, and wait for
    every job it starts."""
    request = mpb.BackfillRequest(feature_view=view, statuses=list(statuses))
    if start:
        request.window.start_time.FromDatetime(start)
    if end:
        request.window.end_time.FromDatetime(end)
    return [wait_job(materialization, job.name) for job in materialization.Backfill(request).jobs]
