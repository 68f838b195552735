"""FeatureServer validation and TTL statuses against fakes of its two collaborators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.serving.features import FeatureRef, FeatureServer, RowInput, Status, TypedValue
from shared.errors import InvalidArgument
from shared.feature_views import Feature, ViewSchema
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
ITEMS = ViewSchema(
    "p", "items", 1, "item_id", VT.VALUE_TYPE_STRING, (Feature("price", VT.VALUE_TYPE_DOUBLE),)
)


class FakeDefinitions:
    def view_schema(self, project, view_id, version=0):
        return {"users": USERS, "items": ITEMS}[view_id]

    def model_feature_set(self, project, set_id):
        raise AssertionError("not used")


class FakeStore:
    def __init__(self, event_times):
        self.event_times = event_times
        self.written = []

    def read(self, requests, keys):
        return [
            ViewColumns({f: [1.0] * len(keys) for f in features}, self.event_times)
            for _, features in requests
        ]

    def write(self, view, rows):
        self.written.append(rows)
        return WriteResult(len(rows), 0)


def _key(value):
    return TypedValue(value, "int64_value")


def test_statuses_follow_event_time_and_ttl():
    store = FakeStore([NOW - timedelta(minutes=5), None, NOW - timedelta(hours=2)])
    server = FeatureServer(store, FakeDefinitions())
    columns = server.get_online_features("p", ["users:age"], "", [_key(1), _key(2), _key(3)], NOW)
    assert columns[0].name == "users:age"
    assert columns[0].statuses == [Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_TTL]


def test_star_expands_to_every_feature_in_declared_order():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    columns = server.get_online_features("p", ["users:*"], "", [_key(1)], NOW)
    assert [column.name for column in columns] == ["users:age", "users:city"]


def test_views_of_different_entities_are_rejected():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    with pytest.raises(InvalidArgument) as caught:
        server.get_online_features("p", ["users:age", "items:price"], "", [_key(1)], NOW)
    assert caught.value.field == "features"


def test_key_of_the_wrong_type_names_its_index():
    server = FeatureServer(FakeStore([NOW]), FakeDefinitions())
    with pytest.raises(InvalidArgument) as caught:
        server.get_online_features(
            "p", ["users:age"], "", [_key(1), TypedValue("2", "string_value")], NOW
        )
    assert caught.value.field == "entity_keys[1]"


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
    good = RowInput({"user_id": _key(1), "age": TypedValue(3.0, "double_value")}, NOW)
    unknown = RowInput({"user_id": _key(2), "height": TypedValue(3.0, "double_value")}, NOW)
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [good, unknown])
    assert caught.value.field == "rows[1].values.height"
    assert store.written == []


def test_write_requires_event_time_and_key():
    server = FeatureServer(FakeStore([]), FakeDefinitions())
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [RowInput({"user_id": _key(1)}, None)])
    assert caught.value.field == "rows[0].event_time"
    with pytest.raises(InvalidArgument) as caught:
        server.write("p", "users", 0, [RowInput({"age": TypedValue(1.0, "double_value")}, NOW)])
    assert caught.value.field == "rows[0].values.user_id"


def test_write_orders_values_as_the_view_declares():
    store = FakeStore([])
    server = FeatureServer(store, FakeDefinitions())
    row = RowInput({"city": TypedValue("Oslo", "string_value"), "user_id": _key(5)}, NOW)
    server.write("p", "users", 0, [row])
    assert store.written == [[(5, None, "Oslo", NOW)]]
