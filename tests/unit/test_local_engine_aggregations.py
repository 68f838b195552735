"""Windowed aggregations of the local engine against a brute-force point-in-time reference.

Event times sit on a 30-minute grid and window lengths are multiples of it, so events fall
exactly on window edges (t - W is excluded, t included) and many events share a time.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.jobs import (
    Aggregation,
    AggregationFunction,
    FileSourceSpec,
    MaterializationTask,
    Store,
    Window,
    WindowedAggregations,
)
from shared.feature_views import Feature, ViewSchema
from shared.values import VT
from tests.fakes.offline_store import InMemoryOfflineStore
from tests.fakes.online_store import InMemoryOnlineStore

F = AggregationFunction
T0 = datetime(2026, 4, 1, 4, tzinfo=UTC)
STEP = timedelta(minutes=30)
WINDOW = Window(T0, T0 + 12 * STEP)
AGGREGATIONS = (
    Aggregation(F.COUNT, "v", 4 * STEP, "count_2h"),
    Aggregation(F.COUNT, "*", 2 * STEP, "events_1h"),
    Aggregation(F.SUM, "v", 4 * STEP, "sum_2h"),
    Aggregation(F.AVG, "v", 6 * STEP, "avg_3h"),
    Aggregation(F.MIN, "v", 2 * STEP, "min_1h"),
    Aggregation(F.MAX, "v", 3 * STEP, "max_90m"),
    Aggregation(F.LAST_N, "v", 6 * STEP, "last_3", n=3),
)
OUTPUT_TYPES = {
    "count_2h": VT.VALUE_TYPE_INT64,
    "events_1h": VT.VALUE_TYPE_INT64,
    "sum_2h": VT.VALUE_TYPE_INT64,
    "avg_3h": VT.VALUE_TYPE_DOUBLE,
    "min_1h": VT.VALUE_TYPE_INT64,
    "max_90m": VT.VALUE_TYPE_INT64,
    "last_3": VT.VALUE_TYPE_INT64_LIST,
}
VIEW = ViewSchema(
    "p",
    "activity",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("v", VT.VALUE_TYPE_INT64),  # not aggregated: the event's own value
        *(Feature(name, value_type) for name, value_type in OUTPUT_TYPES.items()),
    ),
)


class FakeOffline(InMemoryOfflineStore):
    """The contract-tested in-memory offline store, recording each row written."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def write(self, view, table, job_id, chunk):
        self.rows += table.to_pylist()
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


def random_events(seed):
    """(key, time, value) on the grid, from 10 h before the window to its end and beyond."""
    rng = random.Random(seed)
    events = []
    for _ in range(150):
        moment = T0 + rng.randint(-20, 14) * STEP
        value = None if rng.random() < 0.15 else rng.randint(-5, 9)
        events.append((rng.choice([1, 2, 3]), moment, value))
    # Several events of one key at one time, and events exactly on the window's edges.
    events += [(1, T0, 4), (1, T0, 7), (1, T0, None), (2, WINDOW.end, 1), (3, T0 - STEP, 2)]
    return events


def write(path, events):
    keys, times, values = zip(*events, strict=True)
    times = [moment.replace(tzinfo=None) for moment in times]
    table = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "ts": pa.array(times, pa.timestamp("us")),
            "v": pa.array(values, pa.int64()),
        }
    )
    pq.write_table(table, path)
    return FileSourceSpec(str(path), "PARQUET", "ts")


def reference(aggregation, events, key, moment):
    """The aggregate over the key's events in (moment - window, moment]."""
    frame = [(t, v) for k, t, v in events if k == key and moment - aggregation.window < t <= moment]
    if aggregation.column == "*":
        return len(frame)
    values = [(t, v) for t, v in frame if v is not None]
    plain = [v for _, v in values]
    if aggregation.function is F.COUNT:
        return len(plain)
    if aggregation.function is F.LAST_N:
        return [v for _, v in sorted(values, reverse=True)[: aggregation.n]]
    if not plain:
        return None
    if aggregation.function is F.AVG:
        return round(sum(plain) / len(plain), 9)
    return {F.SUM: sum, F.MIN: min, F.MAX: max}[aggregation.function](plain)


def expected_row(events, key, moment, value):
    row = {"user_id": key, "v": value, "event_ts": moment}
    row.update({a.output: reference(a, events, key, moment) for a in AGGREGATIONS})
    return row


def comparable(row):
    row = dict(row, event_ts=row["event_ts"].timestamp())
    if row["avg_3h"] is not None:
        row["avg_3h"] = round(row["avg_3h"], 9)
    return tuple(sorted((name, repr(value)) for name, value in row.items()))


def run(source, chunk_rows, stores=(Store.OFFLINE, Store.ONLINE)):
    offline, online = FakeOffline(), FakeOnline()
    task = MaterializationTask(
        VIEW, source, WINDOW, stores, "job1", transformation=WindowedAggregations(AGGREGATIONS)
    )
    LocalEngine(chunk_rows=chunk_rows).run(
        task, offline_store=offline, online_store=online, on_chunk=lambda progress: True
    )
    return offline.rows, online


@pytest.mark.parametrize("seed", range(6))
def test_every_aggregation_matches_the_brute_force_reference(tmp_path, seed):
    events = random_events(seed)
    rows, _ = run(write(tmp_path / "events.parquet", events), chunk_rows=10_000)
    expected = [
        expected_row(events, k, t, v) for k, t, v in events if WINDOW.start <= t < WINDOW.end
    ]
    assert Counter(map(comparable, rows)) == Counter(map(comparable, expected))


@pytest.mark.parametrize(
    ("seed", "stores"),
    [(seed, (Store.OFFLINE, Store.ONLINE)) for seed in range(3)]
    + [(seed, (Store.ONLINE,)) for seed in range(3)],
)
def test_the_online_store_gets_each_keys_aggregates_as_of_its_latest_event(tmp_path, seed, stores):
    events = random_events(seed)
    _, online = run(write(tmp_path / "events.parquet", events), chunk_rows=7, stores=stores)
    latest = online.latest
    in_window = [(k, t) for k, t, _ in events if WINDOW.start <= t < WINDOW.end]
    newest = {key: max(t for k, t in in_window if k == key) for key, _ in in_window}
    assert set(latest) == set(newest)
    for key, moment in newest.items():
        row = latest[key]
        assert row["event_ts"] == moment
        for aggregation in AGGREGATIONS:
            got = row[aggregation.output]
            want = reference(aggregation, events, key, moment)
            assert (round(got, 9) if isinstance(got, float) else got) == want, aggregation


def test_chunk_size_does_not_change_the_result(tmp_path):
    source = write(tmp_path / "events.parquet", random_events(42))
    whole, _ = run(source, chunk_rows=100_000)
    single, _ = run(source, chunk_rows=1)
    assert Counter(map(comparable, single)) == Counter(map(comparable, whole))


def test_lookback_events_count_but_are_not_stored(tmp_path):
    events = [
        (1, T0 - 4 * STEP, 100),  # exactly one 2 h window before T0: outside every frame at T0
        (1, T0 - STEP, 10),  # inside the 2 h window of T0, before the job's window
        (1, T0, 1),
        (1, T0 + 4 * STEP, 2),  # T0 leaves its 2 h window exactly now
    ]
    rows, _ = run(write(tmp_path / "events.parquet", events), chunk_rows=1)
    got = sorted((row["event_ts"], row["count_2h"], row["sum_2h"], row["last_3"]) for row in rows)
    assert got == [
        (T0, 2, 11, [1, 10, 100]),
        (T0 + 4 * STEP, 1, 2, [2, 1, 10]),
    ]


def test_a_key_with_only_null_values_gets_zero_counts_and_empty_lists(tmp_path):
    rows, _ = run(write(tmp_path / "events.parquet", [(5, T0, None)]), chunk_rows=10)
    (row,) = rows
    assert (row["count_2h"], row["events_1h"], row["sum_2h"], row["avg_3h"], row["last_3"]) == (
        0,
        1,
        None,
        None,
        [],
    )


# --- COUNT_BY_VALUE: a map of value -> occurrences in the frame ---------------------------

GENRES = ("Action", "Comedy", "Drama", "Film-Noir", "Sci-Fi")
COUNT_AGGREGATIONS = (
    Aggregation(F.COUNT_BY_VALUE, "genres", 4 * STEP, "genres_2h"),
    Aggregation(F.COUNT_BY_VALUE, "genres", 12 * STEP, "genres_6h"),
    Aggregation(F.COUNT_BY_VALUE, "v", 3 * STEP, "values_90m"),
)
MAP = VT.VALUE_TYPE_STRING_DOUBLE_MAP
COUNT_VIEW = ViewSchema(
    "p",
    "history",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    tuple(Feature(a.output, MAP) for a in COUNT_AGGREGATIONS),
)


def random_tagged_events(seed):
    """(key, time, genres, value): lists with null elements, empty and null lists."""
    rng = random.Random(seed)
    events = []
    for _ in range(150):
        moment = T0 + rng.randint(-20, 14) * STEP
        roll = rng.random()
        if roll < 0.1:
            genres = None
        elif roll < 0.2:
            genres = []
        else:
            genres = [rng.choice((*GENRES, None)) for _ in range(rng.randint(1, 3))]
        value = None if rng.random() < 0.15 else rng.randint(-3, 12)
        events.append((rng.choice([1, 2, 3]), moment, genres, value))
    return events


def write_tagged(path, events, order):
    rows = [events[i] for i in order]
    table = pa.table(
        {
            "user_id": pa.array([row[0] for row in rows], pa.int64()),
            "ts": pa.array([row[1] for row in rows], pa.timestamp("us", tz="UTC")),
            "genres": pa.array([row[2] for row in rows], pa.list_(pa.string())),
            "v": pa.array([row[3] for row in rows], pa.int64()),
        }
    )
    pq.write_table(table, path)
    return FileSourceSpec(str(path), "PARQUET", "ts")


def counted(aggregation, events, key, moment):
    """The reference: value -> occurrences among the key's events in (moment - window, moment],
    as (value, count) pairs in value order (the map's order)."""
    counts: Counter[str] = Counter()
    for k, t, genres, value in events:
        if k != key or not moment - aggregation.window < t <= moment:
            continue
        values = genres or [] if aggregation.column == "genres" else [value]
        counts.update(str(v) for v in values if v is not None)
    return sorted((value, float(count)) for value, count in counts.items())


def run_counts(source, stores=(Store.OFFLINE, Store.ONLINE)):
    offline, online = FakeOffline(), FakeOnline()
    task = MaterializationTask(
        COUNT_VIEW,
        source,
        WINDOW,
        stores,
        "job1",
        transformation=WindowedAggregations(COUNT_AGGREGATIONS),
    )
    LocalEngine(chunk_rows=16).run(
        task, offline_store=offline, online_store=online, on_chunk=lambda progress: True
    )
    return offline.rows, online


def as_rows(events):
    return Counter(
        (k, t, *(tuple(counted(a, events, k, t)) for a in COUNT_AGGREGATIONS))
        for k, t, _, _ in events
        if WINDOW.start <= t < WINDOW.end
    )


@pytest.mark.parametrize("seed", range(4))
def test_count_by_value_matches_the_brute_force_reference(tmp_path, seed):
    events = random_tagged_events(seed)
    rows, online = run_counts(write_tagged(tmp_path / "e.parquet", events, range(len(events))))
    got = Counter(
        (row["user_id"], row["event_ts"], *(tuple(row[a.output]) for a in COUNT_AGGREGATIONS))
        for row in rows
    )
    assert got == as_rows(events)
    for key, row in online.latest.items():
        newest = max(t for k, t, _, _ in events if k == key and t < WINDOW.end)
        assert row["event_ts"] == newest
        assert row["genres_6h"] == counted(COUNT_AGGREGATIONS[1], events, key, newest)


def test_count_by_value_does_not_depend_on_the_row_order(tmp_path):
    events = random_tagged_events(7)
    order = list(range(len(events)))
    first, _ = run_counts(write_tagged(tmp_path / "a.parquet", events, order))
    random.Random(3).shuffle(order)
    second, _ = run_counts(write_tagged(tmp_path / "b.parquet", events, order))

    def ordered(rows):
        # Map entries as lists of pairs: equal only if their order is equal too.
        return sorted(repr(sorted(row.items())) for row in rows)

    assert ordered(first) == ordered(second)


def test_count_by_value_counts_list_elements_and_excludes_the_window_edge(tmp_path):
    events = [
        (1, T0 - 4 * STEP, ["Drama"], 1),  # exactly 2 h before T0: outside genres_2h at T0
        (1, T0 - STEP, ["Drama", "Comedy", "Drama"], 1),
        (1, T0, ["Comedy", None], None),
        (1, T0, None, 2),  # a peer at T0: counted at T0
        (1, T0 + STEP, [], 1),
    ]
    rows, _ = run_counts(write_tagged(tmp_path / "e.parquet", events, range(len(events))))
    got = sorted((row["event_ts"], row["genres_2h"], row["values_90m"]) for row in rows)
    assert got == [
        (T0, [("Comedy", 2.0), ("Drama", 2.0)], [("1", 1.0), ("2", 1.0)]),
        (T0, [("Comedy", 2.0), ("Drama", 2.0)], [("1", 1.0), ("2", 1.0)]),
        (T0 + STEP, [("Comedy", 2.0), ("Drama", 2.0)], [("1", 2.0), ("2", 1.0)]),
    ]


def test_count_by_value_of_nothing_is_an_empty_map(tmp_path):
    events = [(4, T0, None, None), (5, T0, [None], None)]
    rows, _ = run_counts(write_tagged(tmp_path / "e.parquet", events, range(2)))
    assert [(row["genres_2h"], row["values_90m"]) for row in rows] == [([], [])] * 2
