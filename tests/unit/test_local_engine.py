"""The local compute engine with fakes of the stores: windows, chunks, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.jobs import (
    FileSourceSpec,
    MaterializationTask,
    Store,
    Window,
)
from shared.errors import FailedPrecondition
from shared.feature_views import Feature, ViewSchema
from shared.online_store import WriteResult
from shared.values import VT

T0 = datetime(2026, 4, 1, 4, tzinfo=UTC)
VIEW = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)


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
