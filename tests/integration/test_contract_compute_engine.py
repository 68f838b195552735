"""The `ComputeEngine` contract. The local engine is the one implementation; it runs here
over both sets of stores (Parquet + PostgreSQL, and the in-memory fakes the unit tests use),
so what its unit tests see through the fakes is what the real stores get."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.jobs import (
    ComputeEngine,
    FileSourceSpec,
    MaterializationTask,
    Progress,
    Store,
    Window,
)
from shared.db import to_libpq
from shared.errors import FailedPrecondition
from shared.feature_views import Feature, ViewSchema
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import VT
from tests.fakes.offline_store import InMemoryOfflineStore
from tests.fakes.online_store import InMemoryOnlineStore

T0 = datetime(2026, 4, 1, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(days=1))
ENGINES = {"local": lambda: LocalEngine(chunk_rows=3)}


@pytest.fixture(params=["real_stores", "fake_stores"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple]:
    if request.param == "fake_stores":
        yield InMemoryOfflineStore(), InMemoryOnlineStore()
        return
    online = PostgresOnlineStore(to_libpq(request.getfixturevalue("database_url")), min_size=1)
    yield ParquetOfflineStore(str(tmp_path / "offline")), online
    online.close()


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> ComputeEngine:
    return ENGINES[request.param]()


@pytest.fixture
def view() -> ViewSchema:
    project = f"e_{uuid.uuid4().hex[:8]}"
    return ViewSchema(
        project, "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
    )


@pytest.fixture
def source(tmp_path: Path) -> FileSourceSpec:
    """Ten events in the window (keys 1-3, the newest of each last), two outside it."""
    hours = [-1, *range(10), 24]
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([h % 3 + 1 for h in hours], pa.int64()),
                "n": pa.array([float(h) for h in hours]),
                "ts": pa.array(
                    [T0 + timedelta(hours=h) for h in hours], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        path,
    )
    return FileSourceSpec(str(path), "PARQUET", "ts")


def _task(view, source, stores=(Store.OFFLINE, Store.ONLINE), path=None):
    if path is not None:
        source = FileSourceSpec(path, "PARQUET", "ts")
    return MaterializationTask(view, source, WINDOW, stores, "job1")


def test_the_window_reaches_both_stores_chunk_by_chunk(engine, stores, view, source):
    offline, online = stores
    seen: list[Progress] = []

    def on_chunk(progress: Progress) -> bool:
        seen.append(Progress(**vars(progress)))
        return True

    progress = engine.run(
        _task(view, source), offline_store=offline, online_store=online, on_chunk=on_chunk
    )
    assert progress.rows_read == 10 and progress.rows_written_offline == 10
    assert [p.chunks_done for p in seen] == list(range(1, len(seen) + 1)) and len(seen) >= 2
    assert [p.rows_read for p in seen] == sorted(p.rows_read for p in seen)
    [columns] = online.read([(view, ["n"])], [1, 2, 3, 4])
    # Each key's newest event of the window: hours 9, 7 and 8.
    assert list(columns.values["n"]) == [9.0, 7.0, 8.0, None]
    assert offline.clear_window(view, WINDOW) == 10
    assert offline.clear_window(view, Window(T0 - timedelta(days=1), T0 + timedelta(days=2))) == 0


def test_false_from_on_chunk_stops_the_run(engine, stores, view, source):
    offline, online = stores
    online.ensure_table(view)
    progress = engine.run(
        _task(view, source, stores=(Store.OFFLINE,)),
        offline_store=offline,
        online_store=online,
        on_chunk=lambda progress: False,
    )
    assert progress.chunks_done == 1 and 0 < progress.rows_read < 10
    assert offline.clear_window(view, WINDOW) == progress.rows_read


def test_a_missing_source_is_a_failed_precondition(engine, stores, view, tmp_path):
    offline, online = stores
    with pytest.raises(FailedPrecondition):
        engine.run(
            _task(view, None, path=str(tmp_path / "missing.parquet")),
            offline_store=offline,
            online_store=online,
            on_chunk=lambda progress: True,
        )
