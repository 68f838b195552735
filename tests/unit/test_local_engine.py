"""The local compute engine with fakes of the stores: sources, windows, SQL, chunks, cancelling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LatestPerKey, LocalEngine
from services.materialization.jobs import (
    FileSourceSpec,
    MaterializationTask,
    SqlTransformation,
    Store,
    Window,
)
from shared.errors import FailedPrecondition
from shared.feature_views import Feature, ViewSchema
from shared.values import VT
from tests.fakes.offline_store import InMemoryOfflineStore
from tests.fakes.online_store import InMemoryOnlineStore

T0 = datetime(2026, 4, 1, 4, tzinfo=UTC)
DAY = Window(T0, T0 + timedelta(days=1))
VIEW = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)


class FakeOffline(InMemoryOfflineStore):
    """The contract-tested in-memory offline store, recording each table written."""

    def __init__(self):
        super().__init__()
        self.tables = []

    def write(self, view, table, job_id, chunk):
        self.tables.append(table)
        return super().write(view, table, job_id, chunk)


class FakeOnline(InMemoryOnlineStore):
    """The contract-tested in-memory online store, recording each load."""

    def __init__(self):
        super().__init__()
        self.loads = []
        self._view = None

    def bulk_load(self, view, data):
        self.loads.append(data)
        self._view = view
        return super().bulk_load(view, data)

    @property
    def latest(self):
        return self.rows(self._view) if self._view is not None else {}


def naive(moment):
    return moment.astimezone(UTC).replace(tzinfo=None)


def write_events(path, keys, values, times, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "user_id": pa.array(keys, pa.int64()),
        "n": pa.array(values, pa.float64()),
        "ts": pa.array([naive(t) for t in times], pa.timestamp("us")),
        **extra,
    }
    pq.write_table(pa.table(columns), path)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "clicks.parquet"
    times = [T0 - timedelta(seconds=1), T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)]
    write_events(path, [1, 1, 2, 3], [0.0, 1.0, 2.0, 3.0], times)
    return FileSourceSpec(str(path), "PARQUET", "ts")


def task_for(source, view=VIEW, window=DAY, transformation=None, stores=None, excluded=None):
    stores = stores or (Store.OFFLINE, Store.ONLINE)
    return MaterializationTask(view, source, window, stores, "job1", excluded, transformation)


def materialize(task, chunk_rows=10_000, **engine_options):
    offline, online = FakeOffline(), FakeOnline()
    progress = LocalEngine(chunk_rows=chunk_rows, **engine_options).run(
        task, offline_store=offline, online_store=online, on_chunk=lambda progress: True
    )
    rows = [row for table in offline.tables for row in table.to_pylist()]
    return sorted(rows, key=lambda r: (r["event_ts"], str(r[task.view.join_key]))), progress


def test_engine_reads_the_half_open_window_into_both_stores(source):
    offline, online = FakeOffline(), FakeOnline()
    progress = LocalEngine(chunk_rows=1).run(
        task_for(source), offline_store=offline, online_store=online, on_chunk=lambda p: True
    )
    assert progress.rows_read == 2
    assert progress.chunks_done == 2
    assert progress.rows_written_offline == progress.rows_written_online == 2
    assert {key: (row["n"], row["event_ts"]) for key, row in online.latest.items()} == {
        1: (1.0, T0),
        2: (2.0, T0 + timedelta(hours=1)),
    }
    assert sum(table.num_rows for table in offline.tables) == 2
    assert offline.tables[0].schema.field("event_ts").type == pa.timestamp("us", tz="UTC")


def test_engine_stops_when_told(source):
    online = FakeOnline()
    progress = LocalEngine(chunk_rows=1).run(
        task_for(source, stores=(Store.ONLINE,)),
        offline_store=FakeOffline(),
        online_store=online,
        on_chunk=lambda p: False,
    )
    # A stopped job writes no more: the online rows it folded are dropped with it.
    assert progress.chunks_done == 1 and online.loads == []


def test_online_store_gets_each_keys_newest_row_once():
    latest = LatestPerKey("user_id", flush_rows=3)
    ts = pa.timestamp("us", tz="UTC")
    first = pa.table(
        {"user_id": [2, 1, 2], "n": [1.0, 2.0, 3.0], "event_ts": pa.array([5, 1, 5], ts)}
    )
    assert latest.add(first) is None
    second = pa.table({"user_id": [1, 3], "n": [4.0, 5.0], "event_ts": pa.array([0, 9], ts)})
    flushed = latest.add(second)
    # Key 2 tie at the same time: the row seen later wins; key 1's older event loses.
    assert flushed.to_pydict()["user_id"] == [1, 2, 3]
    assert flushed.to_pydict()["n"] == [2.0, 3.0, 5.0]
    assert latest.take() is None


def test_engine_names_a_missing_timestamp_column(source):
    bad = FileSourceSpec(source.path, "PARQUET", "when")
    with pytest.raises(FailedPrecondition, match="'when'"):
        materialize(task_for(bad))


def test_engine_names_missing_feature_columns(source):
    view = ViewSchema(
        "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("m", VT.VALUE_TYPE_DOUBLE),)
    )
    with pytest.raises(FailedPrecondition, match=r"lacks columns \['m'\]"):
        materialize(task_for(source, view=view))


def test_a_path_that_matches_nothing_fails_the_job(tmp_path):
    for path in (tmp_path / "nope", tmp_path / "*.parquet"):
        with pytest.raises(FailedPrecondition, match="matches no file") as caught:
            materialize(task_for(FileSourceSpec(str(path), "PARQUET", "ts")))
        assert caught.value.reason == "SOURCE_NOT_FOUND"


# --- globs and partitions -------------------------------------------------------------------


def test_globs_select_files_by_name_and_depth(tmp_path):
    write_events(tmp_path / "events" / "part-0.parquet", [1], [1.0], [T0])
    write_events(tmp_path / "events" / "part-1.parquet", [2], [2.0], [T0])
    write_events(tmp_path / "events" / "other.parquet", [3], [3.0], [T0])
    write_events(tmp_path / "events" / "nested" / "part-2.parquet", [4], [4.0], [T0])
    (tmp_path / "events" / "_SUCCESS").write_text("")

    def keys(path):
        rows, _ = materialize(task_for(FileSourceSpec(path, "PARQUET", "ts")))
        return sorted(row["user_id"] for row in rows)

    base = tmp_path / "events"
    assert keys(f"{base}/part-*.parquet") == [1, 2]
    assert keys(f"{base}/part-[!0].parquet") == [2]
    assert keys(f"{base}/part-?.parquet") == [1, 2]
    assert keys(f"{base}/*/part-*.parquet") == [4]
    assert keys(f"{base}/**/part-*.parquet") == [1, 2, 4]
    assert keys(f"file://{base}/part-*.parquet") == [1, 2]
    assert keys(str(base)) == [1, 2, 3, 4]


def test_partitions_outside_the_window_are_never_read(tmp_path):
    root = tmp_path / "events"
    write_events(
        root / "ds=20260401" / "a.parquet", [1, 2], [1.0, 2.0], [T0, T0 + timedelta(hours=1)]
    )
    write_events(root / "ds=20260331" / "a.parquet", [3], [3.0], [T0 - timedelta(hours=5)])
    # Unreadable files: reading any of them would fail the job.
    for day in ("20260301", "20260403", "20250401"):
        (root / f"ds={day}").mkdir()
        (root / f"ds={day}" / "a.parquet").write_bytes(b"not parquet")
    source = FileSourceSpec(f"{root}/ds=*/*.parquet", "PARQUET", "ts", "ds", "%Y%m%d")
    sql = SqlTransformation("SELECT user_id, n, ts, ds FROM source")
    view = ViewSchema(
        "p",
        "clicks",
        1,
        "user_id",
        VT.VALUE_TYPE_INT64,
        (Feature("n", VT.VALUE_TYPE_DOUBLE), Feature("ds", VT.VALUE_TYPE_STRING)),
    )
    window = Window(T0 - timedelta(hours=6), T0 + timedelta(hours=12))
    rows, _ = materialize(task_for(source, view=view, window=window, transformation=sql))
    assert [(row["user_id"], row["ds"]) for row in rows] == [
        (3, "20260331"),
        (1, "20260401"),
        (2, "20260401"),
    ]


def test_a_partitioned_directory_with_nothing_in_the_window_is_empty_not_an_error(tmp_path):
    root = tmp_path / "events"
    write_events(root / "ds=2026-01-01" / "a.parquet", [1], [1.0], [T0 - timedelta(days=90)])
    rows, progress = materialize(task_for(FileSourceSpec(str(root), "PARQUET", "ts", "ds")))
    assert rows == [] and progress.chunks_done == 0


def test_partition_values_that_are_not_dates_are_read(tmp_path):
    root = tmp_path / "events"
    write_events(root / "ds=__HIVE_DEFAULT_PARTITION__" / "a.parquet", [1], [1.0], [T0])
    rows, _ = materialize(task_for(FileSourceSpec(str(root), "PARQUET", "ts", "ds")))
    assert [row["user_id"] for row in rows] == [1]


# --- CSV and event-time types ---------------------------------------------------------------


def test_csv_event_times_are_parsed_with_or_without_a_zone(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(
        "user_id,n,ts\n"
        "1,1.5,2026-04-01 04:00:00\n"  # naive: UTC
        "2,2.5,2026-04-01T05:30:00Z\n"
        "3,3.5,2026-04-01 08:00:00+02:00\n"  # 06:00 UTC
        "4,4.5,2026-04-01 05:59:59.999999+00:00\n"
        "5,5.5,2026-04-01 03:59:59\n"  # before the window
        "6,6.5,2026-04-02 04:00:00Z\n"  # the window's end: excluded
    )
    rows, _ = materialize(task_for(FileSourceSpec(str(path), "CSV", "ts")))
    assert [(row["user_id"], row["event_ts"]) for row in rows] == [
        (1, T0),
        (2, T0 + timedelta(minutes=90)),
        (4, T0 + timedelta(hours=2) - timedelta(microseconds=1)),
        (3, T0 + timedelta(hours=2)),
    ]


def test_a_bad_csv_timestamp_fails_the_job_with_the_value(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("user_id,n,ts\n1,1.0,yesterday\n")
    with pytest.raises(FailedPrecondition, match="yesterday"):
        materialize(task_for(FileSourceSpec(str(path), "CSV", "ts")))


@pytest.mark.parametrize(
    "times",
    [
        pa.array([T0, T0 + timedelta(days=1)], pa.timestamp("ns", tz="Asia/Shanghai")),
        pa.array([naive(T0), naive(T0 + timedelta(days=1))], pa.timestamp("ns")),
        pa.array([T0.date(), (T0 + timedelta(days=1)).date()], pa.date32()),
    ],
)
def test_timestamp_columns_of_any_unit_zone_or_date(tmp_path, times):
    path = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "n": [1.0, 2.0], "ts": times}), path)
    window = Window(T0 - timedelta(hours=4), T0 + timedelta(hours=20))
    rows, _ = materialize(task_for(FileSourceSpec(str(path), "PARQUET", "ts"), window=window))
    expected = T0 if not pa.types.is_date(times.type) else T0 - timedelta(hours=4)
    assert [(row["user_id"], row["event_ts"]) for row in rows] == [(1, expected)]


def test_numeric_event_times_are_refused(tmp_path):
    path = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"user_id": [1], "n": [1.0], "ts": [1775000000]}), path)
    with pytest.raises(FailedPrecondition, match="expected a timestamp"):
        materialize(task_for(FileSourceSpec(str(path), "PARQUET", "ts")))


def test_values_are_stored_in_the_declared_types_and_rows_without_key_dropped(tmp_path):
    path = tmp_path / "clicks.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, None, 2], pa.int32()),
                "n": pa.array([1.5, 2.5, 3.5], pa.float64()),
                "ts": pa.array([naive(T0)] * 3, pa.timestamp("us")),
            }
        ),
        path,
    )
    view = ViewSchema(
        "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_FLOAT),)
    )
    offline = FakeOffline()
    LocalEngine().run(
        task_for(FileSourceSpec(str(path), "PARQUET", "ts"), view=view),
        offline_store=offline,
        online_store=FakeOnline(),
        on_chunk=lambda p: True,
    )
    (table,) = offline.tables
    assert table.schema == pa.schema(
        [("user_id", pa.int64()), ("n", pa.float32()), ("event_ts", pa.timestamp("us", "UTC"))]
    )
    assert table.column("user_id").to_pylist() == [1, 2]


def test_a_value_that_does_not_fit_the_declared_type_fails_the_job(tmp_path):
    path = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"user_id": [1], "n": ["many"], "ts": [naive(T0)]}), path)
    with pytest.raises(FailedPrecondition, match="'n'"):
        materialize(task_for(FileSourceSpec(str(path), "PARQUET", "ts")))


# --- SQL transformations --------------------------------------------------------------------


def test_sql_transformation_runs_over_the_window_rows(source):
    sql = SqlTransformation("SELECT user_id, n * 10 AS n, ts FROM source WHERE user_id <> 2;")
    rows, _ = materialize(task_for(source, transformation=sql))
    assert [(row["user_id"], row["n"], row["event_ts"]) for row in rows] == [(1, 10.0, T0)]


def test_sql_transformation_sees_only_the_window_without_lookback(source):
    sql = SqlTransformation(
        "SELECT user_id, count(*)::DOUBLE AS n, max(ts) AS ts FROM source GROUP BY ALL"
    )
    rows, _ = materialize(task_for(source, transformation=sql))
    assert [(row["user_id"], row["n"]) for row in rows] == [(1, 1.0), (2, 1.0)]


def test_sql_transformation_lookback_feeds_its_window_functions_but_is_not_stored(source):
    sql = SqlTransformation(
        "SELECT user_id, count(*) OVER (PARTITION BY user_id ORDER BY ts) AS n, ts FROM source",
        lookback=timedelta(hours=1),
    )
    rows, _ = materialize(task_for(source, transformation=sql))
    assert [(row["user_id"], row["n"], row["event_ts"]) for row in rows] == [
        (1, 2.0, T0),
        (2, 1.0, T0 + timedelta(hours=1)),
    ]


def test_sql_transformation_must_yield_the_declared_columns(source):
    sql = SqlTransformation("SELECT user_id, ts FROM source")
    with pytest.raises(FailedPrecondition, match=r"output lacks columns \['n'\]"):
        materialize(task_for(source, transformation=sql))


@pytest.mark.parametrize(
    "query",
    [
        "SELECT user_id, n, ts FROM sauce",
        "SELEKT 1",
        "SELECT user_id, n, ts FROM read_parquet('/etc/passwd')",
    ],
)
def test_a_failing_sql_transformation_fails_the_job(source, query):
    with pytest.raises(FailedPrecondition, match="failed"):
        materialize(task_for(source, transformation=SqlTransformation(query)))


# --- chunks and incremental publish ---------------------------------------------------------


def test_any_chunk_size_gives_the_same_rows(tmp_path):
    times = [T0 + timedelta(minutes=7 * i) for i in range(50)]
    write_events(
        tmp_path / "a.parquet", [i % 7 for i in range(50)], [float(i) for i in range(50)], times
    )
    source = FileSourceSpec(str(tmp_path / "a.parquet"), "PARQUET", "ts")
    one, _ = materialize(task_for(source), chunk_rows=10_000)
    for size in (1, 3):
        rows, progress = materialize(task_for(source), chunk_rows=size)
        assert rows == one
        assert progress.chunks_done >= 50 // size


def test_incremental_publish_skips_keys_of_the_previous_partition(tmp_path, source):
    previous = tmp_path / "offline" / "ds=2026-03-31"
    write_events(previous / "part.parquet", [1], [9.0], [T0 - timedelta(days=1)])
    excluded = FileSourceSpec(str(previous), "PARQUET", "ts")
    rows, _ = materialize(task_for(source, excluded=excluded))
    assert [row["user_id"] for row in rows] == [2]
    missing = FileSourceSpec(str(tmp_path / "offline" / "ds=2026-03-30"), "PARQUET", "ts")
    rows, _ = materialize(task_for(source, excluded=missing))
    assert [row["user_id"] for row in rows] == [1, 2]


def test_a_bounded_memory_limit_still_materializes(tmp_path):
    count = 200_000
    times = [T0 + timedelta(seconds=i % 80_000) for i in range(count)]
    write_events(tmp_path / "a.parquet", [i % 5_000 for i in range(count)], [1.0] * count, times)
    source = FileSourceSpec(str(tmp_path / "a.parquet"), "PARQUET", "ts")
    sql = SqlTransformation(
        "SELECT user_id, sum(n) OVER (PARTITION BY user_id ORDER BY ts, n) AS n, ts FROM source"
    )
    engine = LocalEngine(chunk_rows=50_000, memory_limit="64MB", threads=2)
    progress = engine.run(
        task_for(source, transformation=sql, stores=(Store.OFFLINE,)),
        offline_store=FakeOffline(),
        online_store=FakeOnline(),
        on_chunk=lambda p: True,
    )
    assert progress.rows_read == count and progress.chunks_done >= 4
