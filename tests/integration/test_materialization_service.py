"""Materialization over gRPC with real PostgreSQL and Parquet: intervals, backfill by status,
retry, settings, publish, and a service killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
    materialization_settings_pb2,
)
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from infra.local.ports import free_port
from shared.channels import open_channel
from shared.db import create_database, drop_database
from tests.materialization import backfill, register_clicks, wait_job

VT = value_pb2.ValueType
DI = data_interval_pb2.DataInterval
REPO = Path(__file__).resolve().parents[2]


def day(d, hour=4):
    return datetime(2026, 4, d, hour, tzinfo=UTC)


def _window(start, end):
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    return window


def _write_source(path: Path, users: int, events_per_day: int, days=range(1, 6)) -> None:
    rng = np.random.default_rng(7)
    times, keys = [], []
    for d in days:
        base = day(d, 0)
        times += [base + timedelta(seconds=int(s)) for s in rng.integers(0, 86400, events_per_day)]
        keys += list(rng.integers(1, users + 1, events_per_day))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(keys, pa.int64()),
                "clicks": pa.array(rng.random(len(keys))),
                "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )


def _intervals(materialization, view, store=job_pb2.STORE_OFFLINE, window=None):
    request = mpb.ListDataIntervalsRequest(feature_view=view, store=store)
    if window:
        request.window.CopyFrom(_window(*window))
    response = materialization.ListDataIntervals(request)
    return [
        (
            i.window.start_time.ToDatetime(tzinfo=UTC),
            i.window.end_time.ToDatetime(tzinfo=UTC),
            DI.Status.Name(i.status).removeprefix("STATUS_"),
        )
        for i in response.data_intervals
    ]


@pytest.fixture(scope="module")
def stubs(registry_address, materialization_address, serving_address, connect):
    with (
        connect(registry_address) as r,
        connect(materialization_address) as m,
        connect(serving_address) as s,
    ):
        yield (
            registry_service_pb2_grpc.RegistryServiceStub(r),
            materialization_service_pb2_grpc.MaterializationServiceStub(m),
            serving_service_pb2_grpc.FeatureServingServiceStub(s),
        )


@pytest.fixture
def view(stubs, tmp_path):
    source = tmp_path / "events.parquet"
    _write_source(source, users=20, events_per_day=50)
    return register_clicks(stubs[0], f"m_{uuid.uuid4().hex[:8]}", source)


def test_the_issue_example_over_grpc(stubs, view, tmp_path):
    _, materialization, _ = stubs
    # 04-02 INCOMPLETE (its job fails: the source is missing), 04-04 COMPLETE, the rest NONE.
    source = tmp_path / "events.parquet"
    source.rename(tmp_path / "hidden.parquet")
    [failed] = backfill(materialization, view, day(2), day(3), [DI.STATUS_NONE])
    assert failed.state == job_pb2.Job.STATE_FAILED
    (tmp_path / "hidden.parquet").rename(source)
    backfill(materialization, view, day(4), day(5), [DI.STATUS_NONE])
    assert _intervals(materialization, view, window=(day(1), day(6))) == [
        (day(1), day(2), "NONE"),
        (day(2), day(3), "INCOMPLETE"),
        (day(3), day(4), "NONE"),
        (day(4), day(5), "COMPLETE"),
        (day(5), day(6), "NONE"),
    ]
    jobs = backfill(
        materialization, view, day(2, 12), day(4, 12), [DI.STATUS_COMPLETE, DI.STATUS_INCOMPLETE]
    )
    windows = sorted(
        (j.window.start_time.ToDatetime(tzinfo=UTC), j.window.end_time.ToDatetime(tzinfo=UTC))
        for j in jobs
    )
    assert windows == [(day(2, 12), day(3)), (day(4), day(4, 12))]
    assert {j.state for j in jobs} == {job_pb2.Job.STATE_SUCCEEDED}
    assert _intervals(materialization, view) == [
        (day(2), day(2, 12), "INCOMPLETE"),
        (day(2, 12), day(3), "COMPLETE"),
        (day(3), day(4), "NONE"),
        (day(4), day(5), "COMPLETE"),
    ]


def test_retry_of_a_window_no_longer_incomplete_is_refused(stubs, view):
    _, materialization, _ = stubs
    [done] = backfill(materialization, view, day(1), day(2))
    with pytest.raises(grpc.RpcError) as caught:
        materialization.RetryJob(mpb.RetryJobRequest(name=done.name))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_never_materialized_view_needs_a_window(stubs, view):
    _, materialization, _ = stubs
    with pytest.raises(grpc.RpcError) as caught:
        materialization.Backfill(mpb.BackfillRequest(feature_view=view))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "window" in caught.value.details()


def test_rerunning_a_window_does_not_duplicate_offline_rows(stubs, view, tmp_path):
    _, materialization, _ = stubs
    first = backfill(materialization, view, day(1), day(3))[0]
    again = backfill(materialization, view, day(1), day(3), [DI.STATUS_COMPLETE])[0]
    assert first.progress.rows_read == again.progress.rows_read == 100


def test_enabling_online_bootstraps_from_offline_and_serves(stubs, view):
    _, materialization, serving = stubs
    backfill(materialization, view, day(1), day(6))
    settings = materialization_settings_pb2.MaterializationSettings(
        name=f"{view}/materializationSettings", offline_enabled=True, online_enabled=True
    )
    materialization.UpdateMaterializationSettings(
        mpb.UpdateMaterializationSettingsRequest(settings=settings)
    )
    [job] = backfill(materialization, view, day(1), day(6), [DI.STATUS_NONE])
    assert job.state == job_pb2.Job.STATE_SUCCEEDED
    assert list(job.stores) == [job_pb2.STORE_ONLINE]
    project = view.split("/")[1]
    response = serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["clicks:clicks"],
            entity_keys=[value_pb2.Value(int64_value=k) for k in range(1, 21)],
        )
    )
    assert list(response.columns[0].statuses).count(spb.FEATURE_STATUS_PRESENT) == 20


def _start_service(database_url, registry_address, offline_dir, port, file_roots, **extra):
    env = (
        os.environ
        | {f"RECSTACK_{name.upper()}": value for name, value in extra.items()}
        | {
            "RECSTACK_FILES__ROOTS": json.dumps(file_roots),
            "RECSTACK_DATABASE_URL": database_url,
            "RECSTACK_GRPC_PORT": str(port),
            "RECSTACK_REGISTRY_ADDR": registry_address,
            "RECSTACK_OFFLINE_STORE_URI": str(offline_dir),
            "RECSTACK_JOB_LEASE_SECONDS": "2",
            "RECSTACK_JOB_POLL_SECONDS": "0.2",
            "RECSTACK_JOB_CHUNK_ROWS": "500",
            "RECSTACK_LOG_LEVEL": "WARNING",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "services.materialization.server"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = open_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    return process, channel


def test_a_service_killed_mid_job_leaves_the_window_incomplete_and_retry_finishes(
    registry_address, postgres_server_url, tmp_path, connect, file_roots
):
    database = f"crash_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_server_url, database)
    source = tmp_path / "big.parquet"
    _write_source(source, users=500, events_per_day=20_000)
    with connect(registry_address) as channel:
        view = register_clicks(
            registry_service_pb2_grpc.RegistryServiceStub(channel), database, source
        )
    port = free_port()
    process, channel = _start_service(url, registry_address, tmp_path / "offline", port, file_roots)
    try:
        materialization = materialization_service_pb2_grpc.MaterializationServiceStub(channel)
        [job] = materialization.Backfill(
            mpb.BackfillRequest(feature_view=view, window=_window(day(1, 0), day(6, 0)))
        ).jobs
        for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=60):
            if update.job.progress.chunks_done >= 2:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        channel.close()
        process, channel = _start_service(
            url, registry_address, tmp_path / "offline", port, file_roots
        )
        materialization = materialization_service_pb2_grpc.MaterializationServiceStub(channel)
        failed = wait_job(materialization, job.name)
        assert failed.state == job_pb2.Job.STATE_FAILED
        assert "stopped" in failed.error_message
        assert {s for *_, s in _intervals(materialization, view)} == {"INCOMPLETE"}
        retry = materialization.RetryJob(mpb.RetryJobRequest(name=job.name)).job
        finished = wait_job(materialization, retry.name, timeout=120)
        assert finished.state == job_pb2.Job.STATE_SUCCEEDED
        assert finished.progress.rows_read == 100_000
        assert _intervals(materialization, view) == [(day(1, 0), day(6, 0), "COMPLETE")]
        offline_rows = sum(
            pq.read_metadata(p).num_rows for p in (tmp_path / "offline").rglob("*.parquet")
        )
        assert offline_rows == 100_000
    finally:
        process.kill()
        process.wait(10)
        channel.close()
        drop_database(postgres_server_url, database)


GRACE_SECONDS = 8.0


def test_sigterm_stops_the_running_job_at_a_chunk_boundary_and_ends_open_watches(
    registry_address, postgres_server_url, tmp_path, connect, file_roots
):
    """A real service process, SIGTERM mid-job: the job ends FAILED at its next chunk boundary
    with its window INCOMPLETE (never COMPLETE), every open WatchJob ends with a final
    message, and the process exits 0 within its configured grace; a retry then finishes."""
    database = f"term_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_server_url, database)
    source = tmp_path / "big.parquet"
    _write_source(source, users=500, events_per_day=20_000)
    with connect(registry_address) as channel:
        view = register_clicks(
            registry_service_pb2_grpc.RegistryServiceStub(channel), database, source
        )
    port = free_port()
    offline = tmp_path / "offline"
    start = partial(
        _start_service,
        url,
        registry_address,
        offline,
        port,
        file_roots,
        shutdown_grace_seconds=str(GRACE_SECONDS),
        job_workers="1",
    )
    process, channel = start()
    try:
        materialization = materialization_service_pb2_grpc.MaterializationServiceStub(channel)
        [running] = _backfill_jobs(materialization, view, day(1, 0), day(5, 0))
        [queued] = _backfill_jobs(materialization, view, day(5, 0), day(6, 0))
        watches = {job.name: _Watch(materialization, job.name) for job in (running, queued)}
        for update in materialization.WatchJob(mpb.WatchJobRequest(name=running.name)):
            if update.job.progress.chunks_done >= 2:
                break
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(GRACE_SECONDS + 5) == 0, process.stderr.read().decode()[-2000:]
        assert time.monotonic() - signalled < GRACE_SECONDS
        for watch in watches.values():
            watch.thread.join(5)
        # The running job's watch ends plainly, its final message the job FAILED; the queued
        # job's final message shows it still QUEUED, then UNAVAILABLE: watch it elsewhere.
        ran, waiting = watches[running.name], watches[queued.name]
        assert ran.error is None and ran.updates[-1].state == job_pb2.Job.STATE_FAILED
        assert "shut down" in ran.updates[-1].error_message
        assert waiting.updates[-1].state == job_pb2.Job.STATE_QUEUED
        assert waiting.error == grpc.StatusCode.UNAVAILABLE
        channel.close()
        process, channel = start()
        materialization = materialization_service_pb2_grpc.MaterializationServiceStub(channel)
        stopped = materialization.GetJob(mpb.GetJobRequest(name=running.name)).job
        assert stopped.state == job_pb2.Job.STATE_FAILED
        assert 0 < stopped.progress.rows_read < 80_000
        assert _intervals(materialization, view, window=(day(1, 0), day(5, 0))) == [
            (day(1, 0), day(5, 0), "INCOMPLETE")
        ]
        assert wait_job(materialization, queued.name).state == job_pb2.Job.STATE_SUCCEEDED
        retry = materialization.RetryJob(mpb.RetryJobRequest(name=running.name)).job
        assert wait_job(materialization, retry.name, timeout=120).state == (
            job_pb2.Job.STATE_SUCCEEDED
        )
        assert _intervals(materialization, view) == [(day(1, 0), day(6, 0), "COMPLETE")]
        offline_rows = sum(pq.read_metadata(p).num_rows for p in offline.rglob("*.parquet"))
        assert offline_rows == 100_000
    finally:
        process.kill()
        process.wait(10)
        channel.close()
        drop_database(postgres_server_url, database)


def _backfill_jobs(materialization, view, start, end):
    request = mpb.BackfillRequest(feature_view=view, window=_window(start, end))
    return list(materialization.Backfill(request).jobs)


class _Watch:
    """A WatchJob stream read on a thread of its own: its updates and how it ended."""

    def __init__(self, materialization, name):
        self.updates: list = []
        self.error: grpc.StatusCode | None = None
        self._stream = materialization.WatchJob(mpb.WatchJobRequest(name=name), timeout=60)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for update in self._stream:
                self.updates.append(update.job)
        except grpc.RpcError as error:
            self.error = error.code()


def _register_reviews(registry, project, source_path):
    from recstack.registry.v1 import embedding_model_pb2

    field = feature_view_pb2.FeatureField
    production = feature_view_pb2.FeatureProduction(
        transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
        input_field="review_text",
        multimodal_type=feature_view_pb2.FeatureProduction.MULTIMODAL_TYPE_TEXT,
        embedding_model="tiny",
    )
    em = embedding_model_pb2.EmbeddingModel
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id="item",
                    entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
                ),
                rpb.Definition(
                    id="tiny",
                    embedding_model=em(
                        model_type=em.MODEL_TYPE_TEXT_EMBEDDING,
                        provider=em.PROVIDER_TRITON,
                        model_name="tiny",
                        dimension=4,
                    ),
                ),
                rpb.Definition(
                    id="reviews",
                    data_source=data_source_pb2.DataSource(
                        file=data_source_pb2.FileSource(
                            path=str(source_path), format=data_source_pb2.FileSource.FORMAT_PARQUET
                        ),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id="item_reviews",
                    feature_view=feature_view_pb2.FeatureView(
                        entity="item",
                        source="reviews",
                        type=feature_view_pb2.FeatureView.TYPE_BATCH,
                        offline_enabled=True,
                        online_enabled=True,
                        fields=[
                            field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
                            field(name="review_text", value_type=VT.VALUE_TYPE_STRING),
                            field(
                                name="review_text_embedding",
                                value_type=VT.VALUE_TYPE_FLOAT_LIST,
                                production=production,
                            ),
                        ],
                    ),
                ),
            ],
        )
    )
    return f"projects/{project}/featureViews/item_reviews"


def _reviews(path, vectors):
    """An offline partition whose vectors were computed elsewhere (e.g. another pipeline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(range(1, len(vectors) + 1), pa.int64()),
                "review_text": pa.array([f"review {i}" for i in range(len(vectors))]),
                "review_text_embedding": pa.array(vectors, pa.list_(pa.float32())),
                "event_ts": pa.array([day(2, 6)] * len(vectors), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )


def _publish(materialization, view, transform):
    job = materialization.PublishTable(
        mpb.PublishTableRequest(
            feature_view=view,
            partition="2026-04-02",
            mode=mpb.PublishTableRequest.MODE_MERGE,
            transform=transform,
        )
    ).job
    return wait_job(materialization, job.name)


def test_precomputed_vectors_are_validated_and_published_without_a_model(
    stubs, tmp_path, offline_store_dir
):
    registry, materialization, serving = stubs
    project = f"e_{uuid.uuid4().hex[:8]}"
    view = _register_reviews(registry, project, tmp_path / "unused.parquet")
    partition = offline_store_dir / project / "item_reviews" / "v1" / "ds=2026-04-02"
    _reviews(partition / "elsewhere.parquet", [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7]])
    bad = _publish(materialization, view, transform=False)
    assert bad.state == job_pb2.Job.STATE_FAILED
    assert "'review_text_embedding' of key 2 has 3 dimensions" in bad.error_message
    assert "declares 4" in bad.error_message
    _reviews(partition / "elsewhere.parquet", [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    published = _publish(materialization, view, transform=False)
    assert published.state == job_pb2.Job.STATE_SUCCEEDED
    assert published.progress.embedding_calls == 0
    response = serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["item_reviews:review_text_embedding"],
            entity_keys=[value_pb2.Value(int64_value=2)],
        )
    )
    assert list(response.columns[0].values[0].float_list_value.values) == pytest.approx(
        [0.5, 0.6, 0.7, 0.8]
    )
    # transform=true embeds the text again, with the view's model: Triton has no `tiny`.
    recompute = _publish(materialization, view, transform=True)
    assert recompute.state == job_pb2.Job.STATE_FAILED
    assert "tiny" in recompute.error_message


def test_overwrite_publish_leaves_exactly_the_partitions_keys_online(stubs, view, tmp_path):
    _, materialization, serving = stubs
    backfill(materialization, view, day(1, 0), day(6, 0))
    settings = materialization_settings_pb2.MaterializationSettings(
        name=f"{view}/materializationSettings", offline_enabled=True, online_enabled=True
    )
    materialization.UpdateMaterializationSettings(
        mpb.UpdateMaterializationSettingsRequest(settings=settings)
    )
    backfill(
        materialization,
        view,
        day(1, 0),
        day(6, 0),
        [DI.STATUS_NONE],
    )

    def online_keys():
        response = serving.GetOnlineFeatures(
            spb.GetOnlineFeaturesRequest(
                project=view.split("/")[1],
                features=["clicks:clicks"],
                entity_keys=[value_pb2.Value(int64_value=k) for k in range(1, 21)],
            )
        )
        statuses = response.columns[0].statuses
        return {
            k
            for k, s in zip(range(1, 21), statuses, strict=True)
            if s == spb.FEATURE_STATUS_PRESENT
        }

    assert len(online_keys()) == 20
    source = pq.read_table(tmp_path / "events.parquet").to_pylist()
    expected = {row["user_id"] for row in source if row["ts"].date().isoformat() == "2026-04-03"}
    job = materialization.PublishTable(
        mpb.PublishTableRequest(
            feature_view=view,
            partition="2026-04-03",
            mode=mpb.PublishTableRequest.MODE_OVERWRITE,
            transform=True,
        )
    ).job
    assert wait_job(materialization, job.name).state == job_pb2.Job.STATE_SUCCEEDED
    assert len(expected) < 20, "the partition must leave keys out for the test to mean anything"
    assert online_keys() == expected
