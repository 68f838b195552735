"""Materialization jobs and the local engine, with fakes of the stores and the repository."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.jobs import (
    FileSourceSpec,
    JobState,
    MaterializationTask,
    Store,
    Window,
)
from services.materialization.materializer import Materializer
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.feature_views import Feature, ViewSchema
from shared.online_store import WriteResult
from shared.values import VT

T0 = datetime(2026, 4, 1, 4, tzinfo=UTC)
VIEW = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)


class InlineExecutor(Executor):
    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class FakeJobs:
    def __init__(self):
        self.jobs = {}

    def insert(self, job):
        self.jobs[job.job_id] = job

    def save(self, job):
        self.jobs[job.job_id] = job

    def get(self, project, feature_view, job_id):
        return self.jobs.get(job_id)

    def list(self, project, feature_view, offset, limit):
        return list(self.jobs.values())[offset : offset + limit]


class FakeOffline:
    def __init__(self):
        self.tables = []

    def write(self, view, table, job_id, chunk):
        self.tables.append(table)
        return table.num_rows


class FakeOnline:
    def __init__(self, fail=False):
        self.rows = []
        self.fail = fail

    def write(self, view, rows):
        if self.fail:
            raise ConnectionError("online store went away")
        self.rows += rows
        return WriteResult(len(rows), 0)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "clicks.parquet"
    times = [T0 - timedelta(seconds=1), T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1, 2, 3], pa.int64()),
                "n": pa.array([0.0, 1.0, 2.0, 3.0]),
                "ts": pa.array([t.replace(tzinfo=None) for t in times], pa.timestamp("us")),
            }
        ),
        path,
    )
    return FileSourceSpec(str(path), "PARQUET", "ts")


def _task(source, stores=(Store.OFFLINE, Store.ONLINE)):
    return MaterializationTask(VIEW, source, Window(T0, T0 + timedelta(days=1)), stores, "job1")


def test_engine_reads_the_half_open_window_into_both_stores(source):
    offline, online = FakeOffline(), FakeOnline()
    progress = LocalEngine(chunk_rows=1).run(
        _task(source), offline_store=offline, online_store=online, on_chunk=lambda p: True
    )
    assert progress.rows_read == 2
    assert progress.chunks_done == 2
    assert [row[:2] for row in online.rows] == [(1, 1.0), (2, 2.0)]
    assert online.rows[0][2] == T0
    assert sum(table.num_rows for table in offline.tables) == 2


def test_engine_stops_when_told(source):
    online = FakeOnline()
    progress = LocalEngine(chunk_rows=1).run(
        _task(source, (Store.ONLINE,)),
        offline_store=FakeOffline(),
        online_store=online,
        on_chunk=lambda p: False,
    )
    assert progress.chunks_done == 1 and len(online.rows) == 1


def test_engine_names_a_missing_timestamp_column(source):
    bad = FileSourceSpec(source.path, "PARQUET", "when")
    with pytest.raises(FailedPrecondition, match="'when'"):
        LocalEngine().run(
            _task(bad), offline_store=FakeOffline(), online_store=FakeOnline(), on_chunk=bool
        )


class FakeDefinitions:
    def __init__(self, source):
        self.source = source

    def feature_view(self, project, view_id, version=0):
        if view_id != "clicks":
            raise NotFound(f"projects/{project}/featureViews/{view_id} does not exist")
        return SimpleNamespace(
            name="projects/p/featureViews/clicks",
            version=1,
            source="clicks",
            online_enabled=True,
            offline_enabled=False,
        )

    def data_source(self, project, source_id):
        file = SimpleNamespace(path=self.source.path, format=1, partition_column="")
        return SimpleNamespace(WhichOneof=lambda _: "file", file=file, event_timestamp_column="ts")

    def view_schema(self, project, view_id, version=0):
        return VIEW


def _materializer(source, online=None):
    jobs = FakeJobs()
    materializer = Materializer(
        jobs=jobs,
        definitions=FakeDefinitions(source),
        engine=LocalEngine(),
        offline_store=FakeOffline(),
        online_store=online or FakeOnline(),
        executor=InlineExecutor(),
    )
    return materializer, jobs


def test_backfill_runs_a_job_to_success_on_enabled_stores(source):
    materializer, _ = _materializer(source)
    [job] = materializer.backfill(
        "projects/p/featureViews/clicks", Window(T0, T0 + timedelta(days=1)), []
    )
    stored = materializer.get_job(job.name)
    assert stored.state is JobState.SUCCEEDED
    assert stored.stores == (Store.ONLINE,)
    assert stored.progress.rows_written_online == 2
    assert stored.start_time is not None and stored.end_time is not None


def test_a_failing_store_fails_the_job_with_its_message(source):
    materializer, _ = _materializer(source, FakeOnline(fail=True))
    [job] = materializer.backfill(
        "projects/p/featureViews/clicks", Window(T0, T0 + timedelta(days=1)), []
    )
    stored = materializer.get_job(job.name)
    assert stored.state is JobState.FAILED
    assert "online store went away" in stored.error_message


@pytest.mark.parametrize(
    ("name", "window", "field"),
    [
        ("clicks", Window(T0, T0 + timedelta(days=1)), "feature_view"),
        ("projects/p/featureViews/clicks", None, "window"),
        ("projects/p/featureViews/clicks", Window(T0, T0), "window.end_time"),
    ],
)
def test_bad_backfills_are_invalid_argument(source, name, window, field):
    materializer, jobs = _materializer(source)
    with pytest.raises(InvalidArgument) as caught:
        materializer.backfill(name, window, [])
    assert caught.value.field == field
    assert jobs.jobs == {}


def test_unknown_job_is_not_found(source):
    materializer, _ = _materializer(source)
    with pytest.raises(NotFound):
        materializer.get_job("projects/p/featureViews/clicks/jobs/nope")
