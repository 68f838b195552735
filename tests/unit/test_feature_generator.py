"""The feature generator: every feature type, missing values, broadcast, the offline/online
identity, hash stability across processes, and config errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from shared.feature_generator import (
    AvailableFeature,
    FeatureConfigError,
    FeatureGenerator,
    FeatureValueError,
    bind_inputs,
    stable_hash,
)
from shared.values import VT


def fg(*features: dict) -> FeatureGenerator:
    return FeatureGenerator.from_config({"features": list(features)})


def one(generator: FeatureGenerator, **sides) -> dict[str, np.ndarray]:
    """Generate online for items given as `item=...` columns."""
    return generator.generate(sides.get("user", {}), sides["item"], sides.get("context"))


def bucket(value: str, size: int) -> int:
    return stable_hash(value) % size


# --- id_feature -------------------------------------------------------------------------------


def test_id_feature_hashes_tokens_stably_and_shares_buckets_across_int_float_and_text():
    generator = fg(
        {
            "feature_type": "id_feature",
            "feature_name": "item_id",
            "expression": "item:item_id",
            "hash_bucket_size": 1000,
        }
    )

    ints = one(generator, item={"item_id": np.array([7, 8])})["item_id"]
    floats = one(generator, item={"item_id": np.array([7.0, 8.0])})["item_id"]
    texts = one(generator, item={"item_id": ["7", "8"]})["item_id"]

    assert ints.dtype == np.int64
    assert ints.shape == (2, 1)
    assert ints[:, 0].tolist() == [bucket("7", 1000), bucket("8", 1000)]
    np.testing.assert_array_equal(ints, floats)
    np.testing.assert_array_equal(ints, texts)


def test_id_feature_vocabulary_has_an_oov_row_and_missing_values_take_the_default():
    generator = fg(
        {
            "feature_type": "id_feature",
            "feature_name": "gender",
            "expression": "item:gender",
            "vocab_list": ["M", "F"],
        },
        {
            "feature_type": "id_feature",
            "feature_name": "gender_or_m",
            "expression": "item:gender",
            "vocab_list": ["M", "F"],
            "default_value": "M",
        },
    )

    out = one(generator, item={"gender": ["F", "M", "X", None]})

    assert out["gender"][:, 0].tolist() == [2, 1, 0, -1]  # OOV is row 0, missing is -1
    assert out["gender_or_m"][:, 0].tolist() == [2, 1, 0, 1]
    assert generator.signature[0].cardinality == 3


def test_multi_valued_ids_come_from_lists_or_separated_text_padded_to_value_dimension():
    generator = fg(
        {
            "feature_type": "id_feature",
            "feature_name": "genres",
            "expression": "item:genres",
            "vocab_list": ["Action", "Comedy", "Drama"],
            "value_dimension": 2,
            "separator": "|",
        }
    )

    out = one(generator, item={"genres": [["Drama", "Action", "Comedy"], "Comedy", "", None]})

    assert out["genres"].tolist() == [[3, 1], [2, -1], [-1, -1], [-1, -1]]
    assert generator.signature[0].dims == (2,)


def test_num_buckets_takes_integer_ids_as_rows_and_out_of_range_as_missing():
    generator = fg(
        {
            "feature_type": "id_feature",
            "feature_name": "occupation",
            "expression": "item:occupation",
            "num_buckets": 21,
        }
    )

    out = one(generator, item={"occupation": [0, 20, 21, "x", -3]})

    assert out["occupation"][:, 0].tolist() == [0, 20, -1, -1, -1]


# --- raw_feature ------------------------------------------------------------------------------


def test_raw_feature_broadcasts_the_user_value_and_defaults_missing_items():
    generator = fg(
        {"feature_type": "raw_feature", "feature_name": "age", "expression": "user:age"},
        {
            "feature_type": "raw_feature",
            "feature_name": "ctr",
            "expression": "item:ctr",
            "default_value": -1.0,
        },
    )

    out = one(generator, user={"age": 30}, item={"ctr": np.array([0.5, np.nan, 0.25])})

    assert out["age"].tolist() == [[30.0]] * 3
    assert out["ctr"].tolist() == [[0.5], [-1.0], [0.25]]
    assert out["ctr"].dtype == np.float32


@pytest.mark.parametrize(
    ("normalizer", "values", "expected"),
    [
        ("method=log10,threshold=1e-10,default=-10", [100.0, 0.0], [2.0, -10.0]),
        ("method=log1p", [np.e - 1, -5.0], [1.0, 0.0]),
        ("method=zscore,mean=10,standard_deviation=5", [20.0, 5.0], [2.0, -1.0]),
        ("method=minmax,min=2,max=4", [3.0, 4.0], [0.5, 1.0]),
    ],
)
def test_raw_normalizers_follow_easyrec_notation(normalizer, values, expected):
    generator = fg(
        {
            "feature_type": "raw_feature",
            "feature_name": "x",
            "expression": "item:x",
            "normalizer": normalizer,
        }
    )

    out = one(generator, item={"x": np.array(values)})

    np.testing.assert_allclose(out["x"][:, 0], expected, rtol=1e-6)


def test_raw_boundaries_bucketize_into_indices():
    generator = fg(
        {
            "feature_type": "raw_feature",
            "feature_name": "age",
            "expression": "item:age",
            "boundaries": [18, 25, 35],
        }
    )

    out = one(generator, item={"age": [7, 18, 24.9, 35, 90, None]})

    # Missing takes default_value 0 before bucketizing: bucket 0.
    assert out["age"][:, 0].tolist() == [0, 1, 1, 3, 3, 0]
    assert generator.signature[0].cardinality == 4
    assert generator.signature[0].dtype == "TYPE_INT64"


def test_raw_vectors_need_the_declared_length():
    generator = fg(
        {
            "feature_type": "raw_feature",
            "feature_name": "v",
            "expression": "item:v",
            "value_dimension": 2,
        }
    )

    assert one(generator, item={"v": [[1, 2], None]})["v"].tolist() == [[1.0, 2.0], [0.0, 0.0]]
    with pytest.raises(FeatureValueError, match="value_dimension 2"):
        one(generator, item={"v": [[1, 2, 3]]})


def test_text_for_a_raw_feature_is_refused_naming_the_feature():
    generator = fg({"feature_type": "raw_feature", "feature_name": "p", "expression": "item:p"})

    with pytest.raises(FeatureValueError, match=r"'p'.*item:p"):
        one(generator, item={"p": ["cheap"]})


# --- combo_feature ----------------------------------------------------------------------------


def test_combo_crosses_user_and_item_values_including_every_pair_of_multi_values():
    generator = fg(
        {
            "feature_type": "combo_feature",
            "feature_name": "gender_genre",
            "expression": ["user:gender", "item:genres"],
            "hash_bucket_size": 97,
            "value_dimension": 3,
        }
    )

    out = one(generator, user={"gender": "F"}, item={"genres": [["Action", "Drama"], None]})

    assert out["gender_genre"].tolist() == [
        [bucket("F_Action", 97), bucket("F_Drama", 97), -1],
        [-1, -1, -1],
    ]


# --- lookup_feature and match_feature ---------------------------------------------------------


def test_lookup_reads_the_user_map_with_item_keys_combined_by_sum():
    generator = fg(
        {
            "feature_type": "lookup_feature",
            "feature_name": "genre_clicks",
            "map": "user:genre_counts",
            "key": "item:genres",
        },
        {
            "feature_type": "lookup_feature",
            "feature_name": "genre_clicks_max",
            "map": "user:genre_counts",
            "key": "item:genres",
            "combiner": "max",
            "default_value": -1,
        },
    )
    user = {"genre_counts": [("Action", 3.0), ("Drama", 1.5)]}  # Arrow's map shape

    out = one(generator, user=user, item={"genres": [["Action", "Drama"], ["Comedy"], None]})

    assert out["genre_clicks"][:, 0].tolist() == [4.5, 0.0, 0.0]
    assert out["genre_clicks_max"][:, 0].tolist() == [3.0, -1.0, -1.0]


def test_match_hits_the_users_category_item_map_with_all_as_a_wildcard():
    generator = fg(
        {
            "feature_type": "match_feature",
            "feature_name": "bought_brand_in_category",
            "user": "user:clicks",
            "category": "item:category",
            "item": "item:brand",
            "match_type": "hit",
        },
        {
            "feature_type": "match_feature",
            "feature_name": "brand_clicks_anywhere",
            "user": "user:clicks",
            "category": "ALL",
            "item": "item:brand",
        },
    )
    user = {"clicks": {"shoes^nike": 2.0, "ALL^nike": 5.0, "ALL^puma": 1.0}}

    out = one(
        generator,
        user=user,
        item={"category": ["shoes", "hats", "shoes"], "brand": ["nike", "nike", "puma"]},
    )

    assert out["bought_brand_in_category"][:, 0].tolist() == [1.0, 0.0, 0.0]
    assert out["brand_clicks_anywhere"][:, 0].tolist() == [5.0, 5.0, 1.0]


# --- sequence_feature -------------------------------------------------------------------------

SEQUENCE = {
    "feature_type": "sequence_feature",
    "feature_name": "history",
    "expression": "user:recent_items",
    "sequence_length": 3,
    "hash_bucket_size": 1000,
    "embedding_name": "item",
    "side_features": [
        {"feature_name": "genre", "expression": "item:genre", "vocab_list": ["Action", "Drama"]}
    ],
}
GENRES = {"1": "Action", "2": "Drama", "3": None}


def lookup(name, ids):
    assert name == "genre"
    return [GENRES.get(item) for item in ids]


def test_sequences_are_cut_to_length_padded_and_their_side_features_looked_up():
    generator = fg(SEQUENCE)

    long = generator.generate({"recent_items": [2, 1, 3, 4]}, {}, num_items=2, item_lookup=lookup)
    short = generator.generate({"recent_items": "2"}, {}, num_items=1, item_lookup=lookup)

    ids = [bucket(str(i), 1000) for i in (2, 1, 3)]
    assert long["history"].tolist() == [ids, ids]
    assert long["history__genre"].tolist() == [[2, 1, -1], [2, 1, -1]]
    assert short["history"].tolist() == [[bucket("2", 1000), -1, -1]]
    assert [spec.name for spec in generator.signature] == ["history", "history__genre"]
    assert generator.signature[0].kind == "sequence"
    assert generator.signature[0].table == "item"


def test_side_features_without_an_item_lookup_fail_clearly():
    with pytest.raises(FeatureValueError, match="item lookup"):
        fg(SEQUENCE).generate({"recent_items": [1]}, {}, num_items=1)


# --- embedding --------------------------------------------------------------------------------


def test_embeddings_pass_through_with_their_dimension():
    generator = fg(
        {
            "feature_type": "embedding",
            "feature_name": "review",
            "expression": "item:review_embedding",
            "value_dimension": 3,
        }
    )

    out = one(generator, item={"review_embedding": [np.float32([0.1, 0.2, 0.3]), None]})

    np.testing.assert_array_equal(out["review"], np.float32([[0.1, 0.2, 0.3], [0, 0, 0]]))
    with pytest.raises(FeatureValueError, match="2 values"):
        one(generator, item={"review_embedding": [[0.1, 0.2]]})


# --- offline = online -------------------------------------------------------------------------

EVERY_TYPE = {
    "features": [
        {
            "feature_type": "id_feature",
            "feature_name": "user_id",
            "expression": "user:user_id",
            "hash_bucket_size": 5000,
        },
        {
            "feature_type": "id_feature",
            "feature_name": "item_id",
            "expression": "item:item_id",
            "hash_bucket_size": 5000,
        },
        {
            "feature_type": "id_feature",
            "feature_name": "genres",
            "expression": "item:genres",
            "hash_bucket_size": 50,
            "value_dimension": 3,
        },
        {
            "feature_type": "raw_feature",
            "feature_name": "age",
            "expression": "user:age",
            "boundaries": [18, 25, 35, 45],
        },
        {
            "feature_type": "raw_feature",
            "feature_name": "popularity",
            "expression": "item:popularity",
            "normalizer": "method=log1p",
        },
        {"feature_type": "raw_feature", "feature_name": "hour", "expression": "context:hour"},
        {
            "feature_type": "combo_feature",
            "feature_name": "age_genre",
            "expression": ["user:age", "item:genres"],
            "hash_bucket_size": 500,
            "value_dimension": 3,
        },
        {
            "feature_type": "lookup_feature",
            "feature_name": "affinity",
            "map": "user:genre_counts",
            "key": "item:genres",
        },
        {
            "feature_type": "match_feature",
            "feature_name": "seen_genre_item",
            "user": "user:seen",
            "category": "item:genres",
            "item": "item:item_id",
        },
        {**SEQUENCE, "side_features": []},
        {
            "feature_type": "embedding",
            "feature_name": "vector",
            "expression": "item:vector",
            "value_dimension": 2,
        },
    ]
}


def test_training_rows_and_online_requests_give_identical_bits():
    generator = FeatureGenerator.from_config(EVERY_TYPE)
    user = {
        "user_id": 42,
        "age": 31,
        "genre_counts": {"Action": 2.0, "Drama": 0.5},
        "seen": {"Action^1": 1.0},
        "recent_items": [3, 1],
    }
    items = {
        "item_id": np.array([1.0, 2.0, np.nan]),
        "genres": [["Action", "Drama"], ["Comedy"], None],
        "popularity": np.array([10.0, np.nan, 0.123456789]),
        "vector": [[0.5, 0.25], None, [1.0, -1.0]],
    }
    online = generator.generate(user, items, {"hour": 13})

    # Offline, every row carries its own user and context, typed the way Parquet gives them.
    n = 3
    offline = generator.generate_rows(
        {
            "user": {
                "user_id": np.array([42] * n, dtype=np.int64),
                "age": np.array([31.0] * n),
                "genre_counts": [[("Action", 2.0), ("Drama", 0.5)]] * n,
                "seen": [[("Action^1", 1.0)]] * n,
                "recent_items": [np.array([3, 1])] * n,
            },
            "item": {
                "item_id": np.array([1, 2, None], dtype=object),
                "genres": [np.array(["Action", "Drama"]), np.array(["Comedy"]), None],
                "popularity": [10.0, None, 0.123456789],
                "vector": [np.float32([0.5, 0.25]), None, np.float32([1.0, -1.0])],
            },
            "context": {"hour": np.array([13] * n)},
        },
        n,
    )

    assert list(online) == list(offline) == [spec.name for spec in generator.signature]
    for name in online:
        assert online[name].dtype == offline[name].dtype, name
        assert online[name].tobytes() == offline[name].tobytes(), name


def test_no_features_and_no_items_give_empty_tensors():
    generator = FeatureGenerator.from_config(EVERY_TYPE)

    out = generator.generate({}, {}, num_items=0)

    assert out["genres"].shape == (0, 3)
    assert out["vector"].dtype == np.float32


def test_hashes_are_stable_across_processes():
    config = json.dumps(EVERY_TYPE["features"][:3])
    script = (
        "import json, sys\n"
        "from shared.feature_generator import FeatureGenerator\n"
        "g = FeatureGenerator.from_config({'features': json.loads(sys.argv[1])})\n"
        "out = g.generate({'user_id': 'u-42'}, {'item_id': ['a', 'b'], 'genres': [['x'], []]})\n"
        "print(json.dumps({k: v.tolist() for k, v in out.items()}))\n"
    )
    here = FeatureGenerator.from_config({"features": json.loads(config)}).generate(
        {"user_id": "u-42"}, {"item_id": ["a", "b"], "genres": [["x"], []]}
    )

    # A fresh interpreter with a different hash seed: Python's `hash` would disagree.
    result = subprocess.run(
        [sys.executable, "-c", script, config],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )

    assert json.loads(result.stdout) == {k: v.tolist() for k, v in here.items()}


def test_the_hash_function_never_changes():
    # Trained models index their embedding tables with these values: a changed hash would
    # silently scramble every deployed model's ids.
    assert stable_hash("recstack") == 0x82471542224CA3EA
    assert stable_hash("7") % 1000 == 255


# --- config errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "path"),
    [
        ("x", "features"),
        ([{"feature_type": "cross_feature", "feature_name": "a"}], "features[0].feature_type"),
        ([{"feature_type": "raw_feature", "expression": "user:x"}], "features[0].feature_name"),
        ([{"feature_type": "raw_feature", "feature_name": "a"}], "features[0].expression"),
        (
            [{"feature_type": "raw_feature", "feature_name": "a", "expression": "shop:x"}],
            "features[0].expression",
        ),
        (
            [{"feature_type": "id_feature", "feature_name": "a", "expression": "user:x"}],
            "features[0]",
        ),
        (
            [
                {
                    "feature_type": "id_feature",
                    "feature_name": "a",
                    "expression": "user:x",
                    "hash_bucket": 10,
                }
            ],
            "features[0].hash_bucket",
        ),
        (
            [
                {
                    "feature_type": "raw_feature",
                    "feature_name": "a",
                    "expression": "user:x",
                    "boundaries": [3, 1],
                }
            ],
            "features[0].boundaries",
        ),
        (
            [
                {
                    "feature_type": "raw_feature",
                    "feature_name": "a",
                    "expression": "user:x",
                    "normalizer": "method=sqrt",
                }
            ],
            "features[0].normalizer",
        ),
        (
            [
                {
                    "feature_type": "combo_feature",
                    "feature_name": "a",
                    "expression": ["user:x"],
                    "hash_bucket_size": 9,
                }
            ],
            "features[0].expression",
        ),
        (
            [{**SEQUENCE, "side_features": [{"feature_name": "g", "expression": "user:g"}]}],
            "features[0].side_features[0].expression",
        ),
        (
            [{"feature_type": "embedding", "feature_name": "e", "expression": "item:e"}],
            "features[0].value_dimension",
        ),
        (
            [
                {"feature_type": "raw_feature", "feature_name": "a", "expression": "user:x"},
                {"feature_type": "raw_feature", "feature_name": "a", "expression": "item:y"},
            ],
            "features",
        ),
    ],
)
def test_bad_configs_name_the_entry(features, path):
    with pytest.raises(FeatureConfigError) as error:
        FeatureGenerator.from_config({"features": features})

    assert error.value.path == path


def test_config_round_trips():
    generator = FeatureGenerator.from_config(EVERY_TYPE)

    again = FeatureGenerator.from_config(generator.to_config())

    assert again.to_config() == EVERY_TYPE
    assert again.signature == generator.signature


# --- binding to a model feature set -----------------------------------------------------------

AVAILABLE = [
    AvailableFeature("user_profile", "age", "user", VT.VALUE_TYPE_INT64),
    AvailableFeature("user_history", "genre_counts", "user", VT.VALUE_TYPE_STRING_DOUBLE_MAP),
    AvailableFeature("movie", "genres", "item", VT.VALUE_TYPE_STRING_LIST),
    AvailableFeature("movie", "title", "item", VT.VALUE_TYPE_STRING),
    AvailableFeature("movie_stats", "title", "item", VT.VALUE_TYPE_STRING),
]


def bind(*features: dict):
    return bind_inputs(fg(*features), AVAILABLE, user_entity="user", item_entity="item")


def test_binding_resolves_bare_and_qualified_names_and_skips_context():
    binding = bind(
        {"feature_type": "raw_feature", "feature_name": "age", "expression": "user:age"},
        {
            "feature_type": "lookup_feature",
            "feature_name": "affinity",
            "map": "user:genre_counts",
            "key": "item:genres",
        },
        {
            "feature_type": "id_feature",
            "feature_name": "title",
            "expression": "item:movie:title",
            "hash_bucket_size": 10,
        },
        {"feature_type": "raw_feature", "feature_name": "hour", "expression": "context:hour"},
    )

    assert {name: f.ref for name, f in binding.side("user").items()} == {
        "age": "user_profile:age",
        "genre_counts": "user_history:genre_counts",
    }
    assert {name: f.ref for name, f in binding.side("item").items()} == {
        "genres": "movie:genres",
        "movie:title": "movie:title",
    }


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (
            {"feature_type": "raw_feature", "feature_name": "x", "expression": "user:income"},
            "not a feature of the model feature set",
        ),
        (
            {"feature_type": "raw_feature", "feature_name": "x", "expression": "item:age"},
            "not a feature",
        ),
        (
            {
                "feature_type": "id_feature",
                "feature_name": "x",
                "expression": "item:title",
                "hash_bucket_size": 3,
            },
            "ambiguous",
        ),
        (
            {"feature_type": "raw_feature", "feature_name": "x", "expression": "item:genres"},
            "needs a number",
        ),
        (
            {
                "feature_type": "lookup_feature",
                "feature_name": "x",
                "map": "item:genres",
                "key": "user:age",
            },
            "needs a map",
        ),
    ],
)
def test_binding_errors_name_the_key_of_the_input(feature, message):
    with pytest.raises(FeatureConfigError, match=message) as error:
        bind(feature)

    key = "map" if feature["feature_type"] == "lookup_feature" else "expression"
    assert error.value.path == f"features[0].{key}"


def test_entity_keys_bind_as_inputs_of_their_side():
    keys = [
        AvailableFeature.key("user_id", "user", VT.VALUE_TYPE_INT64),
        AvailableFeature.key("item_id", "item", VT.VALUE_TYPE_INT64),
    ]
    generator = fg(
        {
            "feature_type": "id_feature",
            "feature_name": "item",
            "expression": "item:item_id",
            "hash_bucket_size": 10,
        }
    )

    binding = bind_inputs(generator, AVAILABLE, user_entity="user", item_entity="item", keys=keys)

    found = binding.side("item")["item_id"]
    assert found.is_key
    assert found.feature == "item_id"
