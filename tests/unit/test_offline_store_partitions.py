"""Concurrent jobs of one view over adjacent windows that share a day's partition."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.dataset as ds

from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.jobs import Window
from shared.feature_views import Feature, ViewSchema
from shared.values import VT

VIEW = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)
DAY = datetime(2026, 4, 2, tzinfo=UTC)
JOBS = 8
ROWS_PER_HOUR = 50


def _rows(window: Window, generation: int) -> pa.Table:
    minutes = int((window.end - window.start).total_seconds() // 60)
    step = 60 // ROWS_PER_HOUR * 60
    times = [window.start + timedelta(seconds=s) for s in range(0, minutes * 60, step)]
    return pa.table(
        {
            "user_id": pa.array(range(len(times)), pa.int64()),
            "n": pa.array([float(generation)] * len(times)),
            "event_ts": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def test_concurrent_jobs_over_adjacent_windows_of_one_partition_leave_exactly_the_source(
    tmp_path,
):
    store = ParquetOfflineStore(str(tmp_path))
    day = Window(DAY, DAY + timedelta(days=1))
    store.write(VIEW, _rows(day, 0), "first", 0)
    span = timedelta(days=1) / JOBS
    windows = [Window(DAY + span * i, DAY + span * (i + 1)) for i in range(JOBS)]
    for generation in (1, 2, 3):
        start = threading.Barrier(JOBS)
        errors: list[BaseException] = []

        def job(index, generation=generation, start=start, errors=errors):
            try:
                start.wait()
                # What the runner does for a job: clear its window, then write its chunks.
                store.clear_window(VIEW, windows[index])
                store.write(VIEW, _rows(windows[index], generation), f"g{generation}j{index}", 0)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=job, args=(i,)) for i in range(JOBS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        stored = ds.dataset(store.view_path(VIEW), format="parquet", partitioning="hive").to_table()
        expected = pa.concat_tables([_rows(w, generation) for w in windows])
        assert stored.num_rows == expected.num_rows
        assert sorted(stored.column("event_ts").to_pylist()) == sorted(
            expected.column("event_ts").to_pylist()
        )
        assert set(stored.column("n").to_pylist()) == {float(generation)}
