"""PostgresOnlineStore against real PostgreSQL: exact types, newest event wins (out of order,
concurrent, bulk), atomic batches, big sparse reads, dropped versions."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from shared.db import to_libpq
from shared.errors import InvalidArgument, NotFound
from shared.feature_views import Feature, ViewSchema
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import TYPES, VT

T0 = datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=UTC)
ALL_TYPES = [t for t in TYPES if t != VT.VALUE_TYPE_UNSPECIFIED]
# Values PostgreSQL and every client hold exactly (floats representable in float32).
SAMPLES = {
    VT.VALUE_TYPE_INT64: -(2**63),
    VT.VALUE_TYPE_FLOAT: -1.25,
    VT.VALUE_TYPE_DOUBLE: 0.1 + 0.2,
    VT.VALUE_TYPE_STRING: "Ærø 日本 \u2028",
    VT.VALUE_TYPE_BOOL: False,
    VT.VALUE_TYPE_BYTES: b"\x00\xff\x10",
    VT.VALUE_TYPE_FLOAT_LIST: [0.5, -2.0, 3.75],
    VT.VALUE_TYPE_DOUBLE_LIST: [1e-300, -2.5],
    VT.VALUE_TYPE_INT64_LIST: [2**62, -1, 0],
    VT.VALUE_TYPE_STRING_LIST: ["a", "", "β"],
    VT.VALUE_TYPE_STRING_STRING_MAP: {"k": "v", "ö": ""},
    VT.VALUE_TYPE_STRING_DOUBLE_MAP: {"shoes": 0.75, "hats": -1e10},
}


@pytest.fixture(scope="module")
def store(database_url):
    store = PostgresOnlineStore(to_libpq(database_url), min_size=1, max_size=8)
    yield store
    store.close()


def _view(types, *, key_type=VT.VALUE_TYPE_INT64, ttl=0.0):
    features = tuple(Feature(f"f_{VT.Name(t).lower()}", t) for t in types)
    name = f"v{uuid.uuid4().hex[:10]}"
    return ViewSchema("store_test", name, 1, "entity_id", key_type, features, ttl)


def _doubles(store):
    view = _view([VT.VALUE_TYPE_DOUBLE])
    store.ensure_table(view)
    return view


def _read_one(store, view, keys):
    features = [feature.name for feature in view.features]
    (columns,) = store.read([(view, features)], keys)
    rows = list(zip(*(columns.values[name] for name in features), strict=True))
    return rows, list(columns.event_times)


@pytest.mark.parametrize("path", ["write", "bulk_rows", "bulk_arrow"])
def test_every_type_round_trips_exactly(store, path):
    view = _view(ALL_TYPES)
    store.ensure_table(view)
    full = (1, *(SAMPLES[t] for t in ALL_TYPES), T0)
    empty = (2, *(None for _ in ALL_TYPES), T0 + timedelta(microseconds=1))
    rows = [full, empty]
    if path == "write":
        store.write(view, rows)
    elif path == "bulk_rows":
        store.bulk_load(view, rows)
    else:
        names = ["entity_id", *(f.name for f in view.features), "event_ts"]
        types = [pa.int64(), *(TYPES[t].arrow for t in ALL_TYPES), pa.timestamp("us", "UTC")]
        columns = [
            pa.array(column, type=type_)
            for column, type_ in zip(zip(*rows, strict=True), types, strict=True)
        ]
        store.bulk_load(view, pa.Table.from_arrays(columns, names=names))
    values, event_times = _read_one(store, view, [1, 2, 3])
    assert values == [full[1:-1], empty[1:-1], tuple(None for _ in ALL_TYPES)]
    assert event_times == [T0, T0 + timedelta(microseconds=1), None]


def test_fixed_width_columns_with_nulls_load_exactly(store):
    types = [VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_FLOAT, VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_BOOL]
    view = _view(types)
    store.ensure_table(view)
    count = 300
    keys = list(range(count))
    columns = [
        [None if i % 3 == 0 else i - 150 for i in keys],
        [None if i % 5 == 0 else i / 4 for i in keys],
        [None if i % 7 == 0 else i * 1.1 for i in keys],
        [None if i % 2 else i % 4 == 0 for i in keys],
    ]
    times = [T0 + timedelta(seconds=i) for i in keys]
    table = pa.table(
        {
            "entity_id": keys,
            **{
                f.name: pa.array(c, TYPES[f.value_type].arrow)
                for f, c in zip(view.features, columns, strict=True)
            },
            "event_ts": pa.array(times, pa.timestamp("us", "UTC")),
        }
    )
    result = store.bulk_load(view, table)
    assert (result.written, result.stale) == (count, 0)
    values, event_times = _read_one(store, view, keys)
    assert values == list(zip(*columns, strict=True))
    assert event_times == times


def test_string_keys(store):
    view = _view([VT.VALUE_TYPE_DOUBLE], key_type=VT.VALUE_TYPE_STRING)
    store.ensure_table(view)
    store.write(view, [("a", 1.0, T0)])
    store.bulk_load(view, [("b", 2.0, T0), ("ç", 3.0, T0)])
    values, _ = _read_one(store, view, ["ç", "zz", "a", "b"])
    assert values == [(3.0,), (None,), (1.0,), (2.0,)]


def test_older_event_never_overwrites_newer_in_any_order(store):
    view = _doubles(store)
    # One batch with the key twice, newest first; then an older batch; then a newer one.
    batch = [(1, 5.0, T0 + timedelta(seconds=5)), (1, 4.0, T0 + timedelta(seconds=4))]
    assert store.write(view, batch).written == 1
    assert store.write(view, [(1, 1.0, T0)]).stale == 1
    assert _read_one(store, view, [1])[0] == [(5.0,)]
    assert store.write(view, [(1, 6.0, T0 + timedelta(seconds=6))]).written == 1
    assert _read_one(store, view, [1])[0] == [(6.0,)]


def test_bulk_load_into_an_empty_table_keeps_each_keys_newest_row(store):
    view = _doubles(store)
    rows = [(k % 50, float(i), T0 + timedelta(seconds=i)) for i, k in enumerate(range(200))]
    random.Random(1).shuffle(rows)
    result = store.bulk_load(view, rows)
    assert (result.written, result.stale) == (50, 150)
    values, _ = _read_one(store, view, list(range(50)))
    assert values == [(float(150 + k),) for k in range(50)]


def test_bulk_load_into_a_full_table_upserts_newer_rows_only(store):
    view = _doubles(store)
    store.bulk_load(view, [(k, 1.0, T0) for k in range(100)])
    later, earlier = T0 + timedelta(hours=1), T0 - timedelta(hours=1)
    update = [(k, 2.0, later if k % 2 else earlier) for k in range(50, 150)]
    result = store.bulk_load(view, update)
    # Odd keys 51..99 replace, even keys 50..98 are stale, 100..149 are new.
    assert (result.written, result.stale) == (25 + 50, 25)
    values, _ = _read_one(store, view, [50, 51, 120, 0])
    assert values == [(1.0,), (2.0,), (2.0,), (1.0,)]


def test_bulk_load_truncates_nanosecond_event_times(store):
    view = _doubles(store)
    nanos = int(T0.timestamp()) * 10**9 + 123_456_789
    table = pa.table(
        {
            "entity_id": [1],
            "f_value_type_double": [1.0],
            "event_ts": pa.array([nanos], pa.timestamp("ns", "UTC")),
        }
    )
    store.bulk_load(view, table)
    _, event_times = _read_one(store, view, [1])
    assert event_times == [T0.replace(microsecond=123_456)]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda t: t.drop_columns(["f_value_type_double"]), "data.f_value_type_double"),
        (lambda t: t.set_column(0, "entity_id", pa.array([1, None])), "data.entity_id"),
        (
            lambda t: t.set_column(2, "event_ts", pa.array([None, None], pa.timestamp("us"))),
            "data.event_ts",
        ),
        (
            lambda t: t.set_column(1, "f_value_type_double", pa.array(["x", "y"])),
            "data.f_value_type_double",
        ),
    ],
)
def test_bad_bulk_data_is_rejected_and_writes_nothing(store, change, field):
    view = _doubles(store)
    good = pa.table(
        {
            "entity_id": [1, 2],
            "f_value_type_double": [1.0, 2.0],
            "event_ts": pa.array([T0, T0], pa.timestamp("us", "UTC")),
        }
    )
    with pytest.raises(InvalidArgument) as caught:
        store.bulk_load(view, change(good))
    assert caught.value.field == field
    assert _read_one(store, view, [1, 2])[0] == [(None,), (None,)]


def test_a_failing_batch_writes_nothing(store):
    view = _doubles(store)
    with pytest.raises(Exception):  # noqa: B017 - the driver's error; the point is atomicity
        store.write(view, [(1, 1.0, T0), (2, "not a number", T0)])
    assert _read_one(store, view, [1, 2])[0] == [(None,), (None,)]


def test_concurrent_writers_converge_on_the_newest_event(store):
    view = _doubles(store)
    keys, writers, rounds = 20, 6, 15
    # Writer w writes event times w, w + writers, w + 2*writers, ... for every key, in shuffled
    # order, so newer and older events interleave across writers.

    def write(writer):
        rng = random.Random(writer)
        steps = list(range(rounds))
        rng.shuffle(steps)
        for step in steps:
            second = writer + step * writers
            batch = [(k, float(second), T0 + timedelta(seconds=second)) for k in range(keys)]
            rng.shuffle(batch)
            if step % 3 == 0:
                store.bulk_load(view, batch)
            else:
                store.write(view, batch)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    newest = writers * rounds - 1
    values, event_times = _read_one(store, view, list(range(keys)))
    assert values == [(float(newest),)] * keys
    assert event_times == [T0 + timedelta(seconds=newest)] * keys


def test_read_of_1000_keys_half_missing_keeps_request_order(store):
    view = _doubles(store)
    store.bulk_load(view, [(k, k / 2, T0) for k in range(0, 1000, 2)])
    keys = list(range(999, -1, -1))
    values, event_times = _read_one(store, view, keys)
    assert values == [(None,) if k % 2 else (k / 2,) for k in keys]
    assert event_times == [None if k % 2 else T0 for k in keys]


def test_several_views_are_read_in_one_statement(store):
    first, second = _doubles(store), _doubles(store)
    store.write(first, [(1, 1.0, T0)])
    store.write(second, [(2, 2.0, T0)])
    a, b = store.read([(first, ["f_value_type_double"]), (second, ["f_value_type_double"])], [1, 2])
    assert list(a.values["f_value_type_double"]) == [1.0, None]
    assert list(b.values["f_value_type_double"]) == [None, 2.0]


def test_reading_a_dropped_version_is_not_found(store):
    view = _doubles(store)
    store.write(view, [(1, 1.0, T0)])
    assert _read_one(store, view, [1])[0] == [(1.0,)]
    store.drop_table(view)
    with pytest.raises(NotFound):
        _read_one(store, view, [1])


def test_a_session_keeps_writing_after_a_failed_first_batch(database_url):
    # One pooled connection: the failed batch's rollback must not strand its staging table.
    single = PostgresOnlineStore(to_libpq(database_url), min_size=1, max_size=1)
    try:
        view = _doubles(single)
        with pytest.raises(Exception):  # noqa: B017 - the driver's error
            single.write(view, [(1, "not a number", T0)])
        assert single.write(view, [(1, 1.0, T0)]).written == 1
        assert single.bulk_load(view, [(2, 2.0, T0)]).written == 1
        assert _read_one(single, view, [1, 2])[0] == [(1.0,), (2.0,)]
    finally:
        single.close()


def test_scan_since_reads_only_rows_written_after_a_scan_began(store):
    view = _doubles(store)
    store.write(view, [(1, 1.0, T0), (2, 2.0, T0)])

    feature = view.features[0].name
    everything = store.scan_since(view, [feature], None)
    store.write(view, [(2, 20.0, T0 + timedelta(seconds=1)), (3, 3.0, T0)])
    changed = store.scan_since(view, [feature], everything.as_of)

    assert everything.keys == [1, 2]
    assert changed.keys == [2, 3]
    assert changed.columns.values[feature] == [20.0, 3.0]
    assert changed.as_of > everything.as_of
    assert store.scan_since(view, [feature], changed.as_of).keys == []
