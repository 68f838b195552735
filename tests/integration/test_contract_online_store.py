"""The `OnlineStore` contract, run against every implementation: PostgreSQL and the
in-memory fake the unit tests use (tests/fakes), so the fake cannot drift from the store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from shared.db import to_libpq
from shared.errors import InvalidArgument, NotFound
from shared.feature_views import Feature, ViewSchema
from shared.online_store import OnlineStore
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import VT
from tests.fakes.online_store import InMemoryOnlineStore

T0 = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture(params=["postgres", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[OnlineStore]:
    if request.param == "memory":
        yield InMemoryOnlineStore()
        return
    real = PostgresOnlineStore(to_libpq(request.getfixturevalue("database_url")), min_size=1)
    yield real
    real.close()


@pytest.fixture
def view() -> ViewSchema:
    return _view(f"c_{uuid.uuid4().hex[:8]}")


def _view(project: str, name: str = "users") -> ViewSchema:
    features = (
        Feature("score", VT.VALUE_TYPE_DOUBLE),
        Feature("city", VT.VALUE_TYPE_STRING),
        Feature("vector", VT.VALUE_TYPE_FLOAT_LIST),
    )
    return ViewSchema(project, name, 1, "user_id", VT.VALUE_TYPE_INT64, features)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _read(store, view, keys, features=("score", "city")):
    [columns] = store.read([(view, list(features))], keys)
    return [
        (*(columns.values[f][i] for f in features), columns.event_times[i])
        for i in range(len(keys))
    ]


def _lists(values):
    """Columns as lists: an implementation may hand back any sequence."""
    return {name: list(column) for name, column in values.items()}


def test_unwritten_keys_read_as_none_in_key_order(store, view):
    store.ensure_table(view)
    store.write(view, [(2, 0.5, "b", [1.0, 2.0], _at(1))])
    assert _read(store, view, [3, 2, 3]) == [
        (None, None, None),
        (0.5, "b", _at(1)),
        (None, None, None),
    ]


def test_a_write_never_replaces_a_newer_event(store, view):
    store.ensure_table(view)
    first = store.write(view, [(1, 1.0, "new", [0.5], _at(10))])
    assert (first.written, first.stale) == (1, 0)
    result = store.write(view, [(1, 2.0, "old", [0.5], _at(5)), (2, 3.0, "x", [0.5], _at(5))])
    assert (result.written, result.stale) == (1, 1)
    again = store.write(view, [(1, 4.0, "same time", [0.25], _at(10))])
    assert (again.written, again.stale) == (1, 0)
    assert _read(store, view, [1, 2]) == [(4.0, "same time", _at(10)), (3.0, "x", _at(5))]


def test_a_batch_keeps_each_keys_newest_row(store, view):
    rows = [
        (1, 1.0, "a", [0.5], _at(1)),
        (1, 2.0, "b", [0.5], _at(3)),
        (1, 3.0, "c", [0.5], _at(2)),
    ]
    result = store.write(view, rows)
    assert (result.written, result.stale) == (1, 2)
    assert _read(store, view, [1]) == [(2.0, "b", _at(3))]


def test_bulk_load_takes_arrow_or_rows_keeps_the_newest_and_checks_columns(store, view):
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 1], pa.int64()),
            "score": pa.array([1.0, 2.0, 3.0]),
            "city": ["a", "b", "c"],
            "vector": pa.array([[1.0], [2.0], [3.0]], pa.list_(pa.float32())),
            "event_ts": pa.array([_at(1), _at(1), _at(2)], pa.timestamp("us", tz="UTC")),
        }
    )
    result = store.bulk_load(view, table)
    assert (result.written, result.stale) == (2, 1)
    older = store.bulk_load(view, [(1, 9.0, "old", [9.0], _at(0)), (3, 4.0, "d", [4.0], _at(0))])
    assert (older.written, older.stale) == (1, 1)
    assert _read(store, view, [1, 2, 3]) == [
        (3.0, "c", _at(2)),
        (2.0, "b", _at(1)),
        (4.0, "d", _at(0)),
    ]
    [columns] = store.read([(view, ["vector"])], [1])
    assert list(columns.values["vector"][0]) == [3.0]
    with pytest.raises(InvalidArgument) as caught:
        store.bulk_load(view, table.drop_columns(["city"]))
    assert caught.value.field == "data.city"
    with pytest.raises(InvalidArgument):
        store.bulk_load(view, [(1, 1.0)])


def test_retain_keys_deletes_every_other_key(store, view):
    store.write(view, [(k, float(k), str(k), [0.5], _at(k)) for k in range(1, 6)])
    assert store.retain_keys(view, [2, 4, 9]) == 3
    keys, _ = store.scan(view, ["score"])
    assert keys == [2, 4]


def test_reads_of_several_views_in_one_call(store, view):
    other = _view(view.project, "other")
    store.write(view, [(1, 1.0, "a", [0.5], _at(1))])
    store.write(other, [(2, 2.0, "b", [0.5], _at(2))])
    first, second = store.read([(view, ["city"]), (other, ["score", "city"])], [1, 2])
    assert _lists(first.values) == {"city": ["a", None]}
    assert list(first.event_times) == [_at(1), None]
    assert _lists(second.values) == {"score": [None, 2.0], "city": [None, "b"]}


def test_a_dropped_table_reads_as_not_found_and_comes_back_empty(store, view):
    store.write(view, [(1, 1.0, "a", [0.5], _at(1))])
    store.drop_table(view)
    with pytest.raises(NotFound):
        store.read([(view, ["score"])], [1])
    store.ensure_table(view)
    assert _read(store, view, [1]) == [(None, None, None)]
    with pytest.raises(NotFound):
        store.read([(_view(view.project, "never_created"), ["score"])], [1])


def test_scans_are_in_key_order_and_incremental_scans_see_later_writes_only(store, view):
    store.write(view, [(3, 3.0, "c", [0.5], _at(3)), (1, 1.0, "a", [0.5], _at(1))])
    keys, columns = store.scan(view, ["city"])
    assert keys == [1, 3] and _lists(columns.values) == {"city": ["a", "c"]}
    first = store.scan_since(view, ["score"], None)
    assert first.keys == [1, 3] and list(first.columns.event_times) == [_at(1), _at(3)]
    time.sleep(0.01)
    store.write(view, [(2, 2.0, "b", [0.5], _at(2))])
    later = store.scan_since(view, ["score", "city"], first.as_of)
    assert later.keys == [2]
    assert _lists(later.columns.values) == {"score": [2.0], "city": ["b"]}
    assert later.as_of >= first.as_of
    assert store.scan_since(view, ["score"], later.as_of).keys == []
