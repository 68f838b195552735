"""TrainingSetExporter over hand-written offline Parquet (the store's layout) and a fake registry.

The property test at the end compares the exporter with a brute-force reference on random
events: ties, out-of-order writes across files, TTLs, duplicate and unmatched entity rows.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recstack.common.v1 import feature_ref_pb2
from recstack.registry.v1 import model_feature_set_pb2

from services.materialization.export import ExportRequest, TrainingSetExporter
from services.materialization.jobs import Window
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.feature_views import Feature, ViewSchema
from shared.values import VT

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SET = "projects/p/modelFeatureSets/ctr"
USERS = ViewSchema(
    "p",
    "users",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (Feature("age", VT.VALUE_TYPE_DOUBLE), Feature("city", VT.VALUE_TYPE_STRING)),
    ttl_seconds=3600,
)
ITEMS = ViewSchema(
    "p", "items", 2, "item_id", VT.VALUE_TYPE_STRING, (Feature("price", VT.VALUE_TYPE_DOUBLE),)
)
ARROW_TYPES = {
    VT.VALUE_TYPE_INT64: pa.int64(),
    VT.VALUE_TYPE_DOUBLE: pa.float64(),
    VT.VALUE_TYPE_STRING: pa.string(),
    VT.VALUE_TYPE_FLOAT_LIST: pa.list_(pa.float32()),
}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def feature_set(refs: Sequence[tuple[ViewSchema, str]], label: str = "clicked") -> Any:
    return model_feature_set_pb2.ModelFeatureSet(
        name=SET,
        label=label,
        resolved_features=[
            feature_ref_pb2.FeatureRef(feature_view=view.name, version=view.version, feature=name)
            for view, name in refs
        ],
    )


class FakeDefinitions:
    def __init__(self, views: Sequence[ViewSchema], sets: dict[str, Any]) -> None:
        self.views = {(view.name, view.version): view for view in views}
        self.sets = sets

    def model_feature_set(self, project: str, set_id: str) -> Any:
        if set_id not in self.sets:
            raise NotFound(f"projects/{project}/modelFeatureSets/{set_id} does not exist")
        return self.sets[set_id]

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema:
        return self.views[(view_id, version)]


def write_events(
    root: Path, view: ViewSchema, rows: Sequence[dict[str, Any]], name: str, mtime_ns: int = 0
) -> None:
    """Rows (key, features, event_ts) as the offline store lays them out: one file per day."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["event_ts"].strftime("%Y-%m-%d"), []).append(row)
    schema = pa.schema(
        [(view.join_key, ARROW_TYPES[view.key_type])]
        + [(feature.name, ARROW_TYPES[feature.value_type]) for feature in view.features]
        + [("event_ts", pa.timestamp("us", tz="UTC"))]
    )
    for day, day_rows in by_day.items():
        directory = root / view.project / view.name / f"v{view.version}" / f"ds={day}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(day_rows, schema=schema), path)
        if mtime_ns:
            os.utime(path, ns=(mtime_ns, mtime_ns))


def write_entities(path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> str:
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), path)
    return str(path)


ENTITY_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("clicked", pa.int64()),
    ]
)


def user(key: int, minutes: float, age: float | None, city: str = "x") -> dict[str, Any]:
    return {"user_id": key, "age": age, "city": city, "event_ts": at(minutes)}


def item(key: str, minutes: float, price: float) -> dict[str, Any]:
    return {"item_id": key, "price": price, "event_ts": at(minutes)}


def entity(user_id: int | None, minutes: float | None, item_id: str = "a", clicked: int = 0):
    ts = None if minutes is None else at(minutes)
    return {"user_id": user_id, "item_id": item_id, "event_ts": ts, "clicked": clicked}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "offline"
    write_events(
        root,
        USERS,
        [
            user(1, 0, 10.0, "a"),
            user(1, 10, 20.0, "b"),
            user(1, 100, 30.0, "c"),
            user(3, 2000, 5.0, "z"),
            user(5, 1000, 1.0, "e"),
            user(5, 1001, 2.0, "f"),
        ],
        "job1-000000",
    )
    write_events(root, ITEMS, [item("a", 0, 1.5), item("a", 20, 2.5), item("b", 30, 9.0)], "j")
    return root


@pytest.fixture
def exporter(store: Path) -> TrainingSetExporter:
    sets = {
        "ctr": feature_set([(USERS, "*"), (ITEMS, "price")]),
        "users": feature_set([(USERS, "age"), (USERS, "city")]),
    }
    return TrainingSetExporter(FakeDefinitions([USERS, ITEMS], sets), str(store))


def export_rows(exporter: TrainingSetExporter, tmp_path: Path, rows: Sequence[dict]) -> pa.Table:
    entities = write_entities(tmp_path / "entities.parquet", rows, ENTITY_SCHEMA)
    output = tmp_path / "out" / "training.parquet"
    result = exporter.export(ExportRequest(SET, str(output), entity_parquet_path=entities))
    table = pq.read_table(output)
    assert result.row_count == table.num_rows == len(rows)
    assert result.output_path == str(output)
    return table


# --- point in time --------------------------------------------------------------------------


def test_each_row_gets_the_latest_value_at_or_before_its_time_within_ttl(exporter, tmp_path):
    one_us = 1 / 60_000_000
    rows = [
        entity(1, 10),  # equal timestamp: included
        entity(1, 50),  # between events: the one at minute 100 is in the future
        entity(1, 5),  # only the first event is in the past
        entity(1, -1),  # before any event
        entity(1, 70),  # latest event exactly TTL (60 min) old: still valid
        entity(1, 75),  # latest event 65 min old: null, never the older one
        entity(5, 1001 - one_us),  # a microsecond before key 5's second event
        entity(5, 1001),
        entity(2, 50),  # key never seen
        entity(None, 50),  # null key
        entity(1, None),  # null timestamp
    ]
    table = export_rows(exporter, tmp_path, rows)
    ages = [20, 20, 10, None, 20, None, 1.0, 2.0, None, None, None]
    assert table.column("users__age").to_pylist() == ages
    assert (
        table.column("users__city").to_pylist()
        == ["b", "b", "a", None, "b", None, "e", "f"] + [None] * 3
    )


def test_output_is_the_input_columns_then_view__feature_columns(exporter, tmp_path):
    table = export_rows(exporter, tmp_path, [entity(1, 10, clicked=1)])
    assert table.column_names == [
        "user_id",
        "item_id",
        "event_ts",
        "clicked",
        "users__age",
        "users__city",
        "items__price",
    ]
    assert table.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert table.to_pylist()[0]["clicked"] == 1


def test_two_views_with_different_keys_and_ttls(exporter, tmp_path):
    rows = [entity(1, 10_000, "a"), entity(1, 25, "a"), entity(1, 25, "b"), entity(1, 40, "b")]
    table = export_rows(exporter, tmp_path, rows)
    # items has no TTL: a price 10,000 minutes old still counts; users' TTL nulls the age.
    assert table.column("items__price").to_pylist() == [2.5, 2.5, None, 9.0]
    assert table.column("users__age").to_pylist() == [None, 20.0, 20.0, 20.0]


def test_input_order_and_count_survive_duplicates_and_unsorted_times(exporter, tmp_path):
    rows = [entity(1, 50, "b", 1), entity(1, 5), entity(1, 50, "b", 1), entity(2, 1), entity(1, 5)]
    table = export_rows(exporter, tmp_path, rows)
    assert table.select(["user_id", "item_id", "event_ts", "clicked"]).to_pylist() == rows
    assert table.column("users__age").to_pylist() == [20.0, 10.0, 20.0, None, 10.0]


def test_ties_go_to_the_last_written_file_then_the_last_row(tmp_path):
    root = tmp_path / "offline"
    base = 1_800_000_000 * 10**9
    # "a-late" sorts first by name but was written last: its last row wins the tie at minute 5.
    write_events(root, USERS, [user(1, 5, 1.0), user(1, 5, 2.0)], "z-early", mtime_ns=base)
    write_events(root, USERS, [user(1, 5, 3.0), user(1, 5, 4.0)], "a-late", mtime_ns=base + 10**9)
    write_events(root, USERS, [user(2, 5, 7.0), user(2, 5, 8.0)], "m-same", mtime_ns=base)
    sets = {"ctr": feature_set([(USERS, "age")])}
    exporter = TrainingSetExporter(FakeDefinitions([USERS], sets), str(root))
    table = export_rows(exporter, tmp_path, [entity(1, 5), entity(2, 6), entity(1, 4)])
    assert table.column("users__age").to_pylist() == [4.0, 8.0, None]


def test_a_null_value_in_the_latest_event_is_not_filled_from_an_older_one(tmp_path):
    root = tmp_path / "offline"
    write_events(root, USERS, [user(1, 0, 10.0, "a"), user(1, 5, None, "b")], "f")
    sets = {"ctr": feature_set([(USERS, "*")])}
    exporter = TrainingSetExporter(FakeDefinitions([USERS], sets), str(root))
    table = export_rows(exporter, tmp_path, [entity(1, 6)])
    assert table.to_pylist()[0]["users__age"] is None
    assert table.to_pylist()[0]["users__city"] == "b"


@pytest.mark.parametrize("pattern", ["rows", "rows/*.parquet"])
def test_entity_rows_from_a_directory_or_glob_keep_path_then_row_order(exporter, tmp_path, pattern):
    directory = tmp_path / "rows"
    directory.mkdir()
    write_entities(directory / "b.parquet", [entity(1, 5, clicked=3)], ENTITY_SCHEMA)
    write_entities(directory / "a.parquet", [entity(1, 50), entity(2, 1, clicked=2)], ENTITY_SCHEMA)
    output = tmp_path / "out.parquet"
    result = exporter.export_entity_rows(SET, str(tmp_path / pattern), str(output))
    assert result.row_count == 3
    assert pq.read_table(output).column("clicked").to_pylist() == [0, 2, 3]


def test_list_features_such_as_embeddings_are_joined_and_expire_whole(tmp_path):
    root = tmp_path / "offline"
    embeddings = ViewSchema(
        "p",
        "emb",
        1,
        "user_id",
        VT.VALUE_TYPE_INT64,
        (Feature("vector", VT.VALUE_TYPE_FLOAT_LIST),),
        ttl_seconds=600,
    )
    events = [{"user_id": 1, "vector": [0.5, 1.5], "event_ts": at(0)}]
    write_events(root, embeddings, events, "e")
    sets = {"ctr": feature_set([(embeddings, "vector")])}
    exporter = TrainingSetExporter(FakeDefinitions([embeddings], sets), str(root))
    table = export_rows(exporter, tmp_path, [entity(1, 10), entity(1, 11)])
    assert table.schema.field("emb__vector").type == pa.list_(pa.float32())
    assert table.column("emb__vector").to_pylist() == [[0.5, 1.5], None]


def test_duckdb_reads_only_what_it_was_allowed_and_cannot_be_reopened(exporter, tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    for directory in (allowed, other):
        directory.mkdir()
        pq.write_table(pa.table({"a": [1]}), directory / "f.parquet")
    connection = exporter._connect([f"{allowed}/"], tmp_path / "stage", tmp_path / "spill")
    query = "SELECT count(*) FROM read_parquet('{}')"
    assert connection.execute(query.format(allowed / "f.parquet")).fetchall() == [(1,)]
    with pytest.raises(duckdb.PermissionException):
        connection.execute(query.format(other / "f.parquet"))
    with pytest.raises(duckdb.InvalidInputException):
        connection.execute("SET enable_external_access = true")
    connection.close()


def test_naive_input_timestamps_are_utc_and_another_timestamp_column_works(exporter, tmp_path):
    schema = pa.schema(
        [("user_id", pa.int32()), ("seen_at", pa.timestamp("ms")), ("clicked", pa.int8())]
    )
    path = write_entities(
        tmp_path / "e.parquet",
        [{"user_id": 1, "seen_at": at(10).replace(tzinfo=None), "clicked": 1}],
        schema,
    )
    output = tmp_path / "out.parquet"
    exporter.export_entity_rows("projects/p/modelFeatureSets/users", path, str(output), "seen_at")
    assert pq.read_table(output).to_pylist() == [
        {
            "user_id": 1,
            "seen_at": at(10).replace(tzinfo=None),
            "clicked": 1,
            "users__age": 20.0,
            "users__city": "b",
        }
    ]


def test_an_existing_output_is_replaced_whole_and_no_staging_is_left(exporter, tmp_path):
    output = tmp_path / "out" / "training.parquet"
    output.parent.mkdir()
    output.write_bytes(b"old")
    entities = write_entities(tmp_path / "e.parquet", [entity(1, 10)], ENTITY_SCHEMA)
    exporter.export(ExportRequest(SET, str(output), entity_parquet_path=entities))
    assert pq.read_table(output).num_rows == 1
    assert sorted(path.name for path in output.parent.iterdir()) == ["training.parquet"]


# --- snapshot and changes -------------------------------------------------------------------


def test_snapshot_lists_every_key_with_a_value_within_ttl(exporter, tmp_path):
    output = tmp_path / "snapshot.parquet"
    result = exporter.export_snapshot(SET, at(60), f"file://{output}")
    rows = pq.read_table(output).to_pylist()
    assert result.row_count == len(rows) == 3
    # users: key 1's latest event (minute 10) is 50 min old: inside the 60 min TTL; key 3's
    # only event is in the future. items: both keys, no TTL. Entities stack, users first.
    assert rows[0] == {
        "user_id": 1,
        "item_id": None,
        "event_ts": at(60),
        "users__age": 20.0,
        "users__city": "b",
        "items__price": None,
    }
    assert [(r["item_id"], r["items__price"], r["user_id"]) for r in rows[1:]] == [
        ("a", 2.5, None),
        ("b", 9.0, None),
    ]


def test_snapshot_drops_keys_whose_values_expired(exporter, tmp_path):
    output = tmp_path / "snapshot.parquet"
    exporter.export(
        ExportRequest("projects/p/modelFeatureSets/users", str(output), snapshot_time=at(171))
    )
    assert pq.read_table(output).num_rows == 0
    exporter.export(
        ExportRequest("projects/p/modelFeatureSets/users", str(output), snapshot_time=at(160))
    )
    assert pq.read_table(output).to_pylist() == [
        {"user_id": 1, "event_ts": at(160), "users__age": 30.0, "users__city": "c"}
    ]


def test_changes_give_one_row_per_event_in_the_window_with_every_view_as_of_then(tmp_path):
    root = tmp_path / "offline"
    profile = ViewSchema(
        "p", "profile", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("tier", VT.VALUE_TYPE_STRING),)
    )
    write_events(root, USERS, [user(1, 0, 10.0), user(1, 10, 20.0), user(1, 10, 21.0)], "u")
    write_events(root, USERS, [user(2, 30, 5.0), user(1, 100, 30.0)], "v")
    write_events(
        root,
        profile,
        [{"user_id": 1, "tier": "gold", "event_ts": at(20)}],
        "p",
    )
    sets = {"ctr": feature_set([(USERS, "age"), (profile, "tier")])}
    exporter = TrainingSetExporter(FakeDefinitions([USERS, profile], sets), str(root))
    output = tmp_path / "changes.parquet"
    window = Window(at(10), at(100))
    result = exporter.export(ExportRequest(SET, str(output), changes_window=window))
    rows = pq.read_table(output).to_pylist()
    assert result.row_count == 3
    # Minute 10 has two events of user 1 (a tie): one row, the last written value; the end is
    # exclusive; profile's change at minute 20 carries the users value as of then.
    assert [(r["user_id"], r["event_ts"], r["users__age"], r["profile__tier"]) for r in rows] == [
        (1, at(10), 21.0, None),
        (1, at(20), 21.0, "gold"),
        (2, at(30), 5.0, None),
    ]


# --- validation -----------------------------------------------------------------------------


def _invalid(exporter: TrainingSetExporter, request: ExportRequest) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        exporter.export(request)
    return caught.value


def test_output_path_is_required(exporter):
    assert _invalid(exporter, ExportRequest(SET, "", snapshot_time=T0)).field == "output_path"


def test_exactly_one_mode(exporter, tmp_path):
    out = str(tmp_path / "o.parquet")
    assert _invalid(exporter, ExportRequest(SET, out)).field == "entity_rows"
    both = ExportRequest(SET, out, entity_parquet_path="x.parquet", snapshot_time=T0)
    assert _invalid(exporter, both).field == "snapshot_time"
    window = Window(T0, at(1))
    assert (
        _invalid(exporter, ExportRequest(SET, out, snapshot_time=T0, changes_window=window)).field
        == "changes_window"
    )


def test_feature_set_name_must_be_a_resource_name(exporter, tmp_path):
    request = ExportRequest("ctr", str(tmp_path / "o.parquet"), snapshot_time=T0)
    assert _invalid(exporter, request).field == "model_feature_set"


def test_changes_window_must_not_be_empty(exporter, tmp_path):
    request = ExportRequest(SET, str(tmp_path / "o"), changes_window=Window(at(5), at(5)))
    assert _invalid(exporter, request).field == "changes_window.end_time"


@pytest.mark.parametrize(
    ("drop", "field", "words"),
    [
        ("event_ts", "timestamp_column", "'event_ts'"),
        ("clicked", "entity_parquet_path", "label column 'clicked'"),
        ("item_id", "entity_parquet_path", "key column 'item_id'"),
    ],
)
def test_entity_rows_need_timestamp_label_and_keys(exporter, tmp_path, drop, field, words):
    schema = pa.schema([f for f in ENTITY_SCHEMA if f.name != drop])
    rows = [{k: v for k, v in entity(1, 10).items() if k != drop}]
    path = write_entities(tmp_path / "e.parquet", rows, schema)
    error = _invalid(exporter, ExportRequest(SET, str(tmp_path / "o"), entity_parquet_path=path))
    assert error.field == field
    assert words in error.description


def test_entity_columns_must_have_usable_types(exporter, tmp_path):
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_ts", pa.string()),
            ("clicked", pa.int64()),
        ]
    )
    path = write_entities(tmp_path / "e.parquet", [{"user_id": "1", "event_ts": "x"}], schema)
    request = ExportRequest(SET, str(tmp_path / "o"), entity_parquet_path=path)
    assert _invalid(exporter, request).field == "timestamp_column"
    request = ExportRequest(
        SET, str(tmp_path / "o"), entity_parquet_path=path, timestamp_column="x"
    )
    assert _invalid(exporter, request).field == "timestamp_column"
    schema = pa.schema(
        [("user_id", pa.string())] + [f for f in ENTITY_SCHEMA if f.name != "user_id"]
    )
    path = write_entities(tmp_path / "e2.parquet", [{"user_id": "1"}], schema)
    error = _invalid(exporter, ExportRequest(SET, str(tmp_path / "o"), entity_parquet_path=path))
    assert error.field == "entity_parquet_path"
    assert "VARCHAR" in error.description


def test_entity_path_must_exist_and_be_parquet(exporter, tmp_path):
    missing = ExportRequest(SET, str(tmp_path / "o"), entity_parquet_path=str(tmp_path / "no"))
    assert _invalid(exporter, missing).field == "entity_parquet_path"
    (tmp_path / "bad.parquet").write_text("not parquet")
    bad = ExportRequest(SET, str(tmp_path / "o"), entity_parquet_path=str(tmp_path / "bad.parquet"))
    assert _invalid(exporter, bad).field == "entity_parquet_path"


def test_unknown_feature_set_is_not_found(exporter, tmp_path):
    request = ExportRequest(
        "projects/p/modelFeatureSets/nope", str(tmp_path / "o"), snapshot_time=T0
    )
    with pytest.raises(NotFound):
        exporter.export(request)


def test_a_view_without_offline_data_is_a_failed_precondition(store, tmp_path):
    empty = ViewSchema("p", "empty", 1, "user_id", VT.VALUE_TYPE_INT64, USERS.features)
    sets = {"ctr": feature_set([(USERS, "age"), (empty, "age")])}
    exporter = TrainingSetExporter(FakeDefinitions([USERS, empty], sets), str(store))
    with pytest.raises(FailedPrecondition) as caught:
        exporter.export_snapshot(SET, T0, str(tmp_path / "o.parquet"))
    assert "'empty' v1 has no offline data" in caught.value.message


def test_entity_table_needs_a_database(exporter, tmp_path):
    with pytest.raises(FailedPrecondition):
        exporter.export(ExportRequest(SET, str(tmp_path / "o"), entity_table="rows"))


def test_nothing_is_written_when_validation_fails(exporter, tmp_path):
    path = write_entities(tmp_path / "e.parquet", [entity(1, 10)], ENTITY_SCHEMA)
    output = tmp_path / "out" / "o.parquet"
    _invalid(
        exporter, ExportRequest(SET, str(output), entity_parquet_path=path, timestamp_column="t")
    )
    assert list(output.parent.iterdir()) == []


# --- property test against a brute-force reference ------------------------------------------

HOUR = 60
# Few keys and hours, so that ties (one key, one time, several events) are common.
KEYS = st.integers(0, 2)
HOURS = st.integers(0, 30)
# (key, event hour, value, file) for each event; files are written in a random order.
EVENTS = st.lists(st.tuples(KEYS, HOURS, st.integers(0, 99), st.integers(0, 2)), max_size=40)
TTLS = st.sampled_from([0, 5 * 3600, 24 * 3600])
ROWS = st.lists(
    st.tuples(st.one_of(st.none(), KEYS), st.one_of(st.none(), st.integers(-2, 34)), KEYS),
    min_size=1,
    max_size=25,
)


def _view(name: str, key: str, ttl: int) -> ViewSchema:
    features = (Feature("v", VT.VALUE_TYPE_INT64),)
    return ViewSchema("p", name, 1, key, VT.VALUE_TYPE_INT64, features, ttl_seconds=ttl)


def _write_random(root: Path, view: ViewSchema, events: list, write_order: list[int]) -> list:
    """Write each file's events in list order; return (key, time, value, rank) per event."""
    ranked = []
    for rank, file in enumerate(write_order):
        rows = [(k, h, v) for k, h, v, f in events if f == file]
        payload = [{view.join_key: k, "v": v, "event_ts": at(h * HOUR)} for k, h, v in rows]
        # Names sort against write order: only the modification time says which came last.
        write_events(root, view, payload, f"file{9 - rank}", 1_800_000_000 * 10**9 + rank)
        ranked += [(k, h, v, rank, index) for index, (k, h, v) in enumerate(rows)]
    return ranked


def _reference(ranked: list, key: int | None, hour: int | None, ttl: int) -> int | None:
    if key is None or hour is None:
        return None
    past = [e for e in ranked if e[0] == key and e[1] <= hour]
    if not past:
        return None
    latest = max(past, key=lambda e: (e[1], e[3], e[4]))
    if ttl and (hour - latest[1]) * 3600 > ttl:
        return None
    return latest[2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    user_events=EVENTS,
    item_events=EVENTS,
    user_ttl=TTLS,
    item_ttl=TTLS,
    rows=ROWS,
    orders=st.tuples(st.permutations([0, 1, 2]), st.permutations([0, 1, 2])),
    snapshot_hour=st.integers(0, 34),
    window=st.tuples(st.integers(0, 30), st.integers(1, 20)),
)
def test_export_matches_a_brute_force_reference(
    user_events, item_events, user_ttl, item_ttl, rows, orders, snapshot_hour, window
):
    users, items = _view("users", "user_id", user_ttl), _view("items", "item_id", item_ttl)
    sets = {"ctr": feature_set([(users, "v"), (items, "v")], label="y")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "offline"
        ranked_users = _write_random(root, users, user_events, list(orders[0]))
        ranked_items = _write_random(root, items, item_events, list(orders[1]))
        # A view without files has no offline data, which is a different test: seed each one.
        for view, ranked in ((users, ranked_users), (items, ranked_items)):
            seed = {view.join_key: 99, "v": 0, "event_ts": at(-200 * HOUR)}
            write_events(root, view, [seed], "seed")
            ranked.append((99, -200, 0, -1, 0))
        exporter = TrainingSetExporter(FakeDefinitions([users, items], sets), str(root))

        schema = pa.schema(
            [
                ("user_id", pa.int64()),
                ("event_ts", pa.timestamp("us", tz="UTC")),
                ("item_id", pa.int64()),
                ("y", pa.int64()),
            ]
        )
        entities = [
            {"user_id": k, "event_ts": None if h is None else at(h * HOUR), "item_id": i, "y": n}
            for n, (k, h, i) in enumerate(rows)
        ]
        path = write_entities(Path(tmp) / "rows.parquet", entities, schema)
        output = Path(tmp) / "out.parquet"
        assert exporter.export_entity_rows(SET, path, str(output)).row_count == len(rows)
        got = pq.read_table(output).to_pylist()
        expected = [
            {
                **row,
                "users__v": _reference(ranked_users, k, h, user_ttl),
                "items__v": _reference(ranked_items, i, h, item_ttl),
            }
            for row, (k, h, i) in zip(entities, rows, strict=True)
        ]
        assert got == expected

        exporter.export_snapshot(SET, at(snapshot_hour * HOUR), str(output))
        snapshot = {
            (r["user_id"], r["item_id"]): (r["users__v"], r["items__v"])
            for r in pq.read_table(output).to_pylist()
        }
        assert snapshot == _reference_snapshot(
            ranked_users, ranked_items, snapshot_hour, user_ttl, item_ttl
        )

        start, length = window
        exporter.export_changes(
            SET, Window(at(start * HOUR), at((start + length) * HOUR)), str(output)
        )
        changes = [
            (r["user_id"], r["item_id"], r["event_ts"], r["users__v"], r["items__v"])
            for r in pq.read_table(output).to_pylist()
        ]
        assert changes == _reference_changes(
            ranked_users, ranked_items, range(start, start + length), user_ttl, item_ttl
        )


def _reference_snapshot(ranked_users, ranked_items, hour, user_ttl, item_ttl) -> dict:
    expected = {}
    for ranked, ttl, slot in ((ranked_users, user_ttl, 0), (ranked_items, item_ttl, 1)):
        for key in sorted({e[0] for e in ranked}):
            value = _reference(ranked, key, hour, ttl)
            live = [e for e in ranked if e[0] == key and e[1] <= hour]
            if live and (not ttl or (hour - max(e[1] for e in live)) * 3600 <= ttl):
                ids = (key, None) if slot == 0 else (None, key)
                expected[ids] = (value, None) if slot == 0 else (None, value)
    return expected


def _reference_changes(ranked_users, ranked_items, hours, user_ttl, item_ttl) -> list:
    """Users' changes then items', each in (time, key) order, one row per (key, time)."""
    expected = []
    for ranked, ttl, slot in ((ranked_users, user_ttl, 0), (ranked_items, item_ttl, 1)):
        for hour, key in sorted({(e[1], e[0]) for e in ranked if e[1] in hours}):
            value = _reference(ranked, key, hour, ttl)
            if slot == 0:
                expected.append((key, None, at(hour * HOUR), value, None))
            else:
                expected.append((None, key, at(hour * HOUR), None, value))
    return expected
