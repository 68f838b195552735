"""The default FG-config check: document structure and the features expressions name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from recstack.common.v1 import feature_ref_pb2

from services.registry.fg_check import FgInputs, PinnedFeature, check_fg_config
from shared.errors import InvalidArgument
from shared.values import VT

FEATURES = tuple(
    PinnedFeature(
        feature_ref_pb2.FeatureRef(feature_view=view, version=2, feature=feature),
        value_type,
        entity,
    )
    for view, feature, value_type, entity in (
        ("user_profile", "user_id", VT.VALUE_TYPE_INT64, "user"),
        ("user_profile", "age", VT.VALUE_TYPE_DOUBLE, "user"),
        ("user_stats", "user_id", VT.VALUE_TYPE_INT64, "user"),
        ("user_stats", "clicks_7d", VT.VALUE_TYPE_INT64, "user"),
        ("item_profile", "genres", VT.VALUE_TYPE_STRING_LIST, "item"),
    )
)
KEYS = (
    PinnedFeature(feature_ref_pb2.FeatureRef(feature="user_id"), VT.VALUE_TYPE_INT64, "user"),
    PinnedFeature(feature_ref_pb2.FeatureRef(feature="item_id"), VT.VALUE_TYPE_INT64, "item"),
)
INPUTS = FgInputs(FEATURES, KEYS)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def feature(name, expression, feature_type="id_feature"):
    return {"feature_type": feature_type, "feature_name": name, "expression": expression}


def check(*entries, inputs=INPUTS):
    check_fg_config({"features": list(entries)}, inputs)


def error_of(*entries, inputs=INPUTS) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        check(*entries, inputs=inputs)
    return caught.value


def test_bare_and_qualified_names_of_every_side_pass():
    check(
        feature("age", "user:age", "raw_feature"),
        feature("uid", "user:user_profile:user_id"),
        feature("genres", "item:genres"),
        feature("cross", ["user:clicks_7d", "item:item_profile:genres"], "combo_feature"),
        feature("hour", "context:hour", "raw_feature"),
        # Types that read their inputs from other keys (lookup_feature's map/key) need none.
        {"feature_type": "lookup_feature", "feature_name": "affinity", "map": "user:x"},
    )


def test_a_missing_feature_is_named_with_a_suggestion():
    error = error_of(feature("age", "user:age"), feature("genre", "item:genre"))
    assert error.field == "features[1].expression"
    assert "feature 'genre': 'item:genre' names no feature" in error.description
    assert "did you mean item:genres?" in error.description


def test_entity_keys_are_inputs_and_win_over_view_fields_of_that_name():
    check(feature("uid", "user:user_id"), feature("iid", "item:item_id"))


def test_a_bare_name_in_two_views_is_ambiguous():
    error = error_of(feature("uid", "user:user_id"), inputs=FgInputs(FEATURES))
    assert error.field == "features[0].expression"
    assert "user_profile:user_id, user_stats:user_id" in error.description
    assert "write user:VIEW:user_id" in error.description


def test_a_view_qualified_name_must_match_that_view():
    error = error_of(feature("clicks", "user:user_profile:clicks_7d"))
    assert error.field == "features[0].expression"


def test_each_entry_of_an_expression_list_is_checked():
    error = error_of(feature("cross", ["user:age", "item:nope"], "combo_feature"))
    assert error.field == "features[0].expression[1]"


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        ({}, "features", "list the generated features"),
        ({"features": []}, "features", "list the generated features"),
        ({"features": ["age"]}, "features[0]", "must be an object"),
        ({"features": [{"feature_name": "a"}]}, "features[0].feature_type", "is required"),
        ({"features": [{"feature_type": "id_feature"}]}, "features[0].feature_name", "required"),
        (
            {"features": [feature("a", "user:age"), feature("a", "item:genres")]},
            "features[1].feature_name",
            "duplicate feature_name 'a'",
        ),
        ({"features": [feature("a", "age")]}, "features[0].expression", "is not `side:name`"),
        ({"features": [feature("a", "session:age")]}, "features[0].expression", "side user"),
        ({"features": [feature("a", 3)]}, "features[0].expression", "a string or a list"),
        ({"features": [feature("a", [])]}, "features[0].expression", "a string or a list"),
        ({"features": [feature("a", ["user:age", 1])]}, "features[0].expression[1]", "not a str"),
    ],
)
def test_structure_errors_name_the_field(document, field, message):
    with pytest.raises(InvalidArgument) as caught:
        check_fg_config(document, INPUTS)
    assert caught.value.field == field
    assert message in caught.value.description


@pytest.mark.parametrize("example", ["movielens", "quickstart"])
def test_the_examples_fg_documents_pass_against_their_feature_sets(example):
    """The FG documents training uses must register: every input they name is in the set."""
    root = EXAMPLES / example
    document = json.loads((root / "fg.json").read_text())
    definitions = [
        item
        for path in sorted((root / "feature_repo").glob("*.yaml"))
        for item in yaml.safe_load_all(path.read_text())
        if item
    ]
    views = {d["id"]: d for d in definitions if d.get("kind") == "FeatureView"}
    entities = {d["id"]: d for d in definitions if d.get("kind") == "Entity"}
    (feature_set,) = [d for d in definitions if d.get("kind") == "ModelFeatureSet"]
    features = []
    for text in feature_set["features"]:
        view_id, _, name = text.partition(":")
        names = [f["name"] for f in views[view_id]["fields"]] if name == "*" else [name]
        features += [
            PinnedFeature(
                feature_ref_pb2.FeatureRef(feature_view=view_id, version=1, feature=n),
                VT.VALUE_TYPE_DOUBLE,
                views[view_id]["entity"],
            )
            for n in names
        ]
    keys = [
        PinnedFeature(
            feature_ref_pb2.FeatureRef(feature=entities[e]["join_key"]), VT.VALUE_TYPE_INT64, e
        )
        for e in feature_set["entities"]
    ]
    check_fg_config(document, FgInputs(tuple(features), tuple(keys)))
