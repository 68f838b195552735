"""The registry's FG-config check: the feature generator's own load, bound to a version's
pinned features and entity keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from recstack.common.v1 import feature_ref_pb2

from cli.friendly import TYPE_ALIASES
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
VALUE_TYPE_ALIASES = TYPE_ALIASES["recstack.common.v1.ValueType"]


def friendly_type(name: str) -> str:
    """A YAML `value_type` (`INT64`, `ARRAY<STRING>`) as its enum name."""
    return VALUE_TYPE_ALIASES.get(name, f"VALUE_TYPE_{name}")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def feature(name, expression, feature_type="id_feature", **settings):
    entry = {"feature_type": feature_type, "feature_name": name, "expression": expression}
    if feature_type in ("id_feature", "combo_feature"):
        entry["hash_bucket_size"] = 100
    return {**entry, **settings}


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
        feature("genres", "item:genres", value_dimension=3),
        feature("cross", ["user:clicks_7d", "item:item_profile:genres"], "combo_feature"),
        feature("hour", "context:hour", "raw_feature"),
    )


def test_a_missing_feature_is_named_with_what_the_set_has():
    error = error_of(feature("age", "user:age", "raw_feature"), feature("genre", "item:genre"))
    assert error.field == "features[1].expression"
    assert "input item:genre is not a feature" in error.description
    assert "item_profile:genres" in error.description


def test_entity_keys_are_inputs_and_win_over_view_fields_of_that_name():
    check(feature("uid", "user:user_id"), feature("iid", "item:item_id"))


def test_a_bare_name_in_two_views_is_ambiguous():
    # With another join key, `user_id` is only a field, of two user views.
    uid = PinnedFeature(feature_ref_pb2.FeatureRef(feature="uid"), VT.VALUE_TYPE_INT64, "user")
    error = error_of(feature("uid", "user:user_id"), inputs=FgInputs(FEATURES, (uid, KEYS[1])))
    assert error.field == "features[0].expression"
    assert "ambiguous" in error.description
    assert "user_profile:user_id" in error.description


def test_a_type_the_feature_cannot_read_is_refused():
    error = error_of(feature("g", "item:genres", "raw_feature"))
    assert error.field == "features[0].expression"
    assert "needs a number" in error.description


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "features"),
        ({"features": [{"feature_type": "id_feature"}]}, "features[0].feature_name"),
        ({"features": [feature("a", "shop:x")]}, "features[0].expression"),
        ({"features": [feature("a", "user:age", "lookup_feature")]}, "features[0].expression"),
        (
            {"features": [feature("a", "user:age", "raw_feature", boundaries=[2, 1])]},
            "features[0].boundaries",
        ),
    ],
)
def test_fg_errors_name_the_field(document, field):
    with pytest.raises(InvalidArgument) as caught:
        check_fg_config(document, INPUTS)
    assert caught.value.field == field


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
        types = {f["name"]: f["value_type"] for f in views[view_id]["fields"]}
        features += [
            PinnedFeature(
                feature_ref_pb2.FeatureRef(feature_view=view_id, version=1, feature=n),
                VT.Value(friendly_type(types[n])),
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
