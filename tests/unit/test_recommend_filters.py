"""The filters: already_seen, item_state and declarative rules, on an in-memory item table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2
from recstack.recommend.v1 import scene_pb2

from services.recommend.filter.already_seen import AlreadySeen
from services.recommend.filter.rules import RuleFilter, parse
from services.recommend.item_cache import ItemTable
from services.recommend.pipeline import Candidates, StageRequest, StageSettings
from services.recommend.stages import default_stage_registry
from services.recommend.validation import validate_scene
from shared.errors import InvalidArgument
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.values import VT

NOW = datetime(2026, 12, 1, tzinfo=UTC)
MOVIES = ViewSchema(
    "p",
    "movies",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("year", VT.VALUE_TYPE_INT64),
        Feature("genres", VT.VALUE_TYPE_STRING_LIST),
        Feature("in_stock", VT.VALUE_TYPE_BOOL),
        Feature("title", VT.VALUE_TYPE_STRING),
    ),
)
ROWS = ViewColumns(
    {
        "year": [1977, 1995, None, 2001],
        "genres": [["Sci-Fi", "Action"], ["Horror"], None, ["Comedy"]],
        "in_stock": [True, False, None, True],
        "title": ["Star Wars", "Scream", None, "Amélie"],
    },
    [NOW] * 4,
)
TABLE = ItemTable.from_scan(MOVIES, [1, 2, 3, 4], ROWS, NOW)


class Items:
    """The item cache's interface over one in-memory table."""

    def lookup(self, project, view_id, item_ids):
        table = self.table(project, view_id)
        return table, table.rows(item_ids)

    def values(self, project, view_id, feature, item_ids):
        table, rows = self.lookup(project, view_id, item_ids)
        return table.column(feature, rows)

    def table(self, project, view_id):
        assert (project, view_id) == ("p", "movies")
        return TABLE


CANDIDATES = Candidates.of(["1", "2", "3", "4", "99"])


def request(**context) -> StageRequest:
    return StageRequest("s", "p", "7", context, 10, user={"hist:recent": [2, 99.0]})


def kept(filter_, req=None) -> list[str]:
    return CANDIDATES.item_ids[filter_.keep(req or request(), CANDIDATES)].tolist()


def rules(*entries) -> RuleFilter:
    return RuleFilter(Items(), "p", parse({"rules": list(entries)}, "filters[0]"), ("u:x",))


def test_already_seen_drops_every_id_the_users_features_hold():
    assert kept(AlreadySeen(("hist:recent", "events:missing"))) == ["1", "3", "4"]


def test_item_state_keeps_in_stock_items_and_drops_unknown_ones():
    registry = default_stage_registry()
    settings = StageSettings("item_state", "stock", params={"feature": "movies:in_stock"})
    stage = registry.get("filter", "item_state").factory(settings, context())

    assert kept(stage) == ["1", "4"]


def context():
    from services.recommend.pipeline import BuildContext, StageDeps

    deps = StageDeps(Items(), None, None, None)
    return BuildContext("s", scene_pb2.Scene(project="p"), deps)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"field": "movies:year", "op": ">=", "value": 1990.0}], ["2", "4"]),
        ([{"field": "item:movies:year", "op": "<", "value": 1990}], ["1"]),
        ([{"field": "movies:genres", "op": "not in", "value": ["Horror"]}], ["1", "3", "4", "99"]),
        ([{"field": "movies:genres", "op": "in", "value": ["Action", "Comedy"]}], ["1", "4"]),
        ([{"field": "movies:genres", "op": "contains", "value": "Horror"}], ["2"]),
        ([{"field": "movies:title", "op": "!=", "value": "Scream"}], ["1", "3", "4", "99"]),
        (
            [
                {"field": "movies:year", "op": ">", "value": 1970},
                {"field": "movies:genres", "op": "not in", "value": ["Comedy"]},
            ],
            ["1", "2"],
        ),
        (
            [
                {
                    "any": [
                        {"field": "context:kids", "op": "==", "value": False},
                        {"field": "movies:genres", "op": "not in", "value": ["Horror"]},
                    ]
                }
            ],
            ["1", "3", "4", "99"],
        ),
        ([{"field": "movies:year", "op": "<=", "value_from": "context:max_year"}], ["1", "2"]),
        ([{"field": "context:device", "op": "==", "value": "tv"}], []),
    ],
)
def test_rules_keep_the_candidates_that_satisfy_them(entries, expected):
    assert kept(rules(*entries), request(kids=True, max_year=1995, device="phone")) == expected


def test_a_context_rule_that_holds_keeps_everything():
    assert kept(rules({"field": "context:device", "op": "==", "value": "tv"}), request(device="tv"))


def test_text_against_a_number_fails_the_rule_instead_of_the_request():
    assert kept(rules({"field": "movies:title", "op": ">", "value": 3})) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "filters[0].params.rules"),
        ({"rules": [], "x": 1}, "filters[0].params"),
        (
            {"rules": [{"field": "movies:year", "op": "~", "value": 1}]},
            "filters[0].params.rules[0].op",
        ),
        (
            {"rules": [{"field": "year", "op": "==", "value": 1}]},
            "filters[0].params.rules[0].field",
        ),
        (
            {"rules": [{"field": "movies:year", "op": "in", "value": 1}]},
            "filters[0].params.rules[0].value",
        ),
        (
            {"rules": [{"field": "movies:year", "op": "==", "value": [1]}]},
            "filters[0].params.rules[0].value",
        ),
        ({"rules": [{"field": "movies:year", "op": "=="}]}, "filters[0].params.rules[0]"),
        (
            {"rules": [{"field": "movies:year", "op": "==", "value_from": "movies:year"}]},
            "filters[0].params.rules[0].value_from",
        ),
        (
            {"rules": [{"any": [{"any": [{"any": [{}]}]}]}]},
            "filters[0].params.rules[0].any[0].any[0]",
        ),
    ],
)
def test_bad_rules_are_refused_naming_the_key(params, field):
    with pytest.raises(InvalidArgument) as error:
        parse(params, "filters[0]")

    assert error.value.field == field


def test_scenes_with_bad_filter_params_are_refused_when_saved():
    struct = struct_pb2.Struct()
    struct.update({"feature": "in_stock"})
    scene = scene_pb2.Scene(
        project="p",
        user_entity="user",
        item_entity="item",
        recalls=[scene_pb2.StageConfig(type="popularity", quota=1, params=_popularity())],
        filters=[scene_pb2.StageConfig(type="item_state", params=struct)],
        reranks=[scene_pb2.StageConfig(type="top_n")],
        top_n=10,
    )

    with pytest.raises(InvalidArgument) as error:
        validate_scene(scene, default_stage_registry())

    assert error.value.field == "scene.filters[0].params.feature"


def _popularity() -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"feature_view": "movies", "feature": "year"})
    return struct
