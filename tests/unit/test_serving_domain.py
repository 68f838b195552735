"""FeatureServer validation, ref resolution and statuses against fakes of its collaborators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.serving.features import EntityKeys, FeatureServer, RowInput, TypedValue
from shared.errors import InvalidArgument
from shared.feature_views import Feature, ViewSchema
from shared.online_features import EPOCH, FeatureRef, Status
from shared.online_store import ViewColumns, WriteResult
from shared.values import VT

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
USERS = ViewSchema(
    "p",
    "users",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (Feature("age", VT.VALUE_TYPE_DOUBLE), Feature("city", VT.VALUE_TYPE_STRING)),
    ttl_seconds=3600,
)
USERS_V2 = ViewSchema(
    "p", "users", 2, "user_id", VT.VALUE_TYPE_INT64, (Feature("age", VT.VALUE_TYPE_DOUBLE),)
)
ITEMS = ViewSchema(
    "p", "items", 1, "item_id", VT.VALUE_TYPE_STRING, (Feature("price", VT.VALUE_TYPE_DOUBLE),)
)


class FakeDefinitions:
    def __init__(self):
        self.calls = 0
        self.views = {("users", 0): USERS, ("users", 1): USERS, ("items", 0): ITEMS}

    def view_schema(self, project, view_id, version=0):
        self.calls += 1
        return self.views[(view_id, version)]

    def model_feature_set(self, project, set_id):
        self.calls += 1
        refs = [SimpleNamespace(feature_view="users", version=1, feature="*")]
        return SimpleNamespace(resolved_features=refs)


class FakeStore:
    def __init__(self, event_times):
        self.event_times = event_times
        self.written = []
        self.reads = []

    def read(self, requests, keys):
        self.reads.append((requests, list(keys)))
        return [
            ViewColumns({f: [1.0] * len(keys) for f in features}, self.event_times)
            for _, features in requests
        ]

    def write(self, view, rows):
        self.written.append(rows)
        return WriteResult(len(rows), 0)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _keys(*values):
    return EntityKeys(["int64_value"] * len(values), list(values))


def _micros(moment):
    return (moment - EPOCH) // timedelta(microseconds=1)


def test_statuses_follow_event_time_and_ttl():
    times = [NOW - timedelta(minutes=5), None, NOW - timedelta(hours=2)]
    server = FeatureServer(FakeStore(times), FakeDefinitions())
    (read,) = server.get_online_features("p", ["users:age"], "", _keys(1, 2, 3), NOW)
    assert read.names == ("users:age",)
    assert read.statuses == [Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_TTL]
    assert read.event_micros == [_micros(times[0]), None, _micros(times[2])]


def test_a_value_exactly_ttl_old_is_still_present():
    server = FeatureServer(FakeStore([NOW - timedelta(hours=1)]), FakeDefinitions())
    (read,) = server.get_online_features("p", ["users:age"], "", _keys(1), NOW)
    assert read.statuses == [Status.PRESENT]


def test_star_expands_to_every_feature_in_declared_order():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    (read,) = server.get_online_features("p", ["users:*"], "", _keys(1), NOW)
    assert read.names == ("users:age", "users:city")
    assert read.value_types == (VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_STRING)


def test_pinned_versions_keep_their_label_and_read_separately():
    definitions = FakeDefinitions()
    definitions.views[("users", 2)] = USERS_V2
    store = FakeStore([NOW])
    server = FeatureServer(store, definitions)
    reads = server.get_online_features("p", ["users@1:age", "users@2:age"], "", _keys(1), NOW)
    assert [read.names for read in reads] == [("users@1:age",), ("users@2:age",)]
    requested = store.reads[0][0]
    assert [view.version for view, _ in requested] == [1, 2]


def test_a_model_feature_set_reads_its_pinned_features_named_as_declared():
    store = FakeStore([NOW])
    server = FeatureServer(store, FakeDefinitions())
    (read,) = server.get_online_features("p", [], "ranker", _keys(1), NOW)
    assert read.names == ("users:age", "users:city")
    assert store.reads[0][0][0][0].version == 1


def test_features_and_a_feature_set_are_exclusive():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    for refs, feature_set in (([], ""), (["users:age"], "ranker")):
        with pytest.raises(InvalidArgument) as caught:
            server.get_online_features("p", refs, feature_set, _keys(1), NOW)
        assert caught.value.field == "features"


def test_views_of_different_entities_are_rejected():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    with pytest.raises(InvalidArgument) as caught:
        server.get_online_features("p", ["users:age", "items:price"], "", _keys(1), NOW)
    assert caught.value.field == "features"


def test_key_of_the_wrong_type_names_its_index():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    keys = EntityKeys(["int64_value", "string_value"], [1, "2"])
    with pytest.raises(InvalidArgument) as caught:
        server.get_online_features("p", ["users:age"], "", keys, NOW)
    assert caught.value.field == "entity_keys[1]"


def test_resolved_refs_are_reused_until_definitions_may_have_changed():
    definitions = FakeDefinitions()
    clock = Clock()
    server = FeatureServer(FakeStore([NOW]), definitions, definitions_seconds=1.0, clock=clock)
    for _ in range(3):
        server.get_online_features("p", ["users:age"], "", _keys(1), NOW)
    assert definitions.calls == 1
    clock.now += 1.5
    server.get_online_features("p", ["users:age"], "", _keys(1), NOW)
    assert definitions.calls == 2


def test_zero_definitions_seconds_resolves_every_call():
    definitions = FakeDefinitions()
    server = FeatureServer(FakeStore([NOW]), definitions, definitions_seconds=0.0)
    for _ in range(3):
        server.get_online_features("p", ["users:age"], "", _keys(1), NOW)
    assert definitions.calls == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v:f", FeatureRef("v", 0, "f")), ("v@3:*", FeatureRef("v", 3, "*"))],
)
def test_feature_ref_parsing(text, expected):
    assert FeatureRef.parse(text, "features[0]") == expected


@pytest.mark.parametrize("text", ["v", ":f", "v:", "v@x:f"])
def test_bad_feature_refs(text):
    with pytest.raises(InvalidArgument):
        FeatureRef.parse(text, "features[0]")


def test_write_validates_every_row_before_writing():
    store = FakeStore([])
    server = FeatureServer(store, FakeDefinitions())
    good = RowInput(
        {"user_id": TypedValue(1, "int64_value"), "age": TypedValue(3.0, "double_value")}, NOW
    )
    unknown = RowInput(
        {"user_id": TypedValue(2, "int64_value"), "height": TypedValue(3.0, "double_value")}, NOW
    )
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [good, unknown])
    assert caught.value.field == "rows[1].values.height"
    assert store.written == []


def test_write_requires_event_time_and_key():
    server = FeatureServer(FakeStore([]), FakeDefinitions())
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [RowInput({"user_id": TypedValue(1, "int64_value")}, None)])
    assert caught.value.field == "rows[0].event_time"
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [RowInput({"age": TypedValue(1.0, "double_value")}, NOW)])
    assert caught.value.field == "rows[0].values.user_id"


def test_write_orders_values_as_the_view_declares():
    store = FakeStore([])
    server = FeatureServer(store, FakeDefinitions())
    row = RowInput(
        {"city": TypedValue("Oslo", "string_value"), "user_id": TypedValue(5, "int64_value")}, NOW
    )
    server.write("p", "users", 0, [row])
    assert store.written == [[(5, None, "Oslo", NOW)]]


class RecordingObserver:
    def __init__(self):
        self.reads = []
        self.writes = []

    def read(self, views, seconds, now_micros):
        self.reads.append((views, now_micros))

    def write(self, view, result, seconds):
        self.writes.append((view, result))


def test_observer_sees_every_read_and_write():
    observer = RecordingObserver()
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions(), observer=observer)
    server.get_online_features("p", ["users:age"], "", _keys(1), NOW)
    server.write("p", "users", 0, [RowInput({"user_id": TypedValue(1, "int64_value")}, NOW)])
    ((views, now_micros),) = observer.reads
    assert views[0].view == USERS
    assert now_micros == _micros(NOW)
    assert observer.writes == [(USERS, WriteResult(1, 0))]
