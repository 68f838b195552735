"""The `OfflineStore` contract, run against the Parquet store (on a local directory) and
against the in-memory fake unit tests use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.jobs import OfflineStore, Window
from shared.feature_views import Feature, ViewSchema
from shared.values import VT
from tests.fakes.offline_store import InMemoryOfflineStore

T0 = datetime(2026, 4, 1, tzinfo=UTC)
VIEW = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)


@pytest.fixture(params=["parquet", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OfflineStore:
    if request.param == "memory":
        return InMemoryOfflineStore()
    return ParquetOfflineStore(str(tmp_path / "offline"))


def _events(hours: list[int], key: int = 1) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([key] * len(hours), pa.int64()),
            "n": pa.array([float(h) for h in hours]),
            "event_ts": pa.array(
                [T0 + timedelta(hours=h) for h in hours], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def _window(start_hour: int, end_hour: int) -> Window:
    return Window(T0 + timedelta(hours=start_hour), T0 + timedelta(hours=end_hour))


def test_written_rows_are_cleared_by_window_start_inclusive_end_exclusive(store):
    # Three days: 04-01 and 04-02 each get rows, 04-03 one row at its midnight.
    assert store.write(VIEW, _events([0, 12, 24, 36, 48]), "job", 0) == 5
    assert store.clear_window(VIEW, _window(12, 48)) == 3
    assert store.clear_window(VIEW, _window(12, 48)) == 0
    assert store.clear_window(VIEW, _window(0, 100)) == 2


def test_a_job_rewriting_its_chunk_replaces_it_and_jobs_add_up(store):
    store.write(VIEW, _events([1, 2]), "job-a", 0)
    store.write(VIEW, _events([1, 2]), "job-a", 0)
    store.write(VIEW, _events([3]), "job-a", 1)
    store.write(VIEW, _events([1], key=2), "job-b", 0)
    assert store.clear_window(VIEW, _window(0, 24)) == 4


def test_views_and_versions_are_apart_and_drop_forgets_a_view(store):
    other = ViewSchema("p", "clicks", 2, VIEW.join_key, VIEW.key_type, VIEW.features)
    store.write(VIEW, _events([1, 2]), "job", 0)
    store.write(other, _events([1]), "job", 0)
    store.drop(VIEW)
    store.drop(VIEW)  # dropping what is gone is no error
    assert store.clear_window(VIEW, _window(0, 24)) == 0
    assert store.clear_window(other, _window(0, 24)) == 1


def test_the_source_names_the_view_versions_partitioned_parquet(store):
    source = store.source(VIEW)
    assert (source.file_format, source.event_timestamp_column, source.partition_column) == (
        "PARQUET",
        "event_ts",
        "ds",
    )
    other = ViewSchema("p", "clicks", 2, VIEW.join_key, VIEW.key_type, VIEW.features)
    assert store.source(other).path != source.path


def test_the_parquet_source_reads_back_every_event_partitioned_by_day(tmp_path):
    """What the fake cannot show: the real source is a readable, day-partitioned dataset."""
    store = ParquetOfflineStore(str(tmp_path / "offline"))
    store.write(VIEW, _events([0, 12, 24]), "job", 0)
    source = store.source(VIEW)
    table = ds.dataset(source.path, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("n").to_pylist()) == [0.0, 12.0, 24.0]
    assert sorted(set(table.column("ds").to_pylist())) == ["2026-04-01", "2026-04-02"]
