"""The feature generator: matrix layout, missing values, config round trip and errors."""

from __future__ import annotations

import numpy as np
import pytest

from shared.feature_generator import (
    FeatureConfigError,
    FeatureGenerator,
    FeatureValueError,
)


def raw(name: str, side: str, default: float | None = None) -> dict:
    config = {"feature_type": "raw_feature", "feature_name": name, "expression": f"{side}:{name}"}
    if default is not None:
        config["default_value"] = default
    return config


GENERATOR = FeatureGenerator.from_config(
    {
        "features": [
            raw("user_profile:age", "user"),
            raw("item_stats:price", "item"),
            raw("user_profile:activity", "user"),
            raw("item_stats:ctr", "item"),
        ]
    }
)


def test_columns_follow_the_configured_order_and_users_broadcast():
    matrix = GENERATOR.generate(
        {"user_profile:age": 30, "user_profile:activity": 0.5},
        {"item_stats:price": np.array([1.0, 2.0, 3.0]), "item_stats:ctr": [0.1, 0.2, 0.3]},
    )

    assert matrix.dtype == np.float32
    assert matrix.shape == (3, 4)
    np.testing.assert_array_equal(matrix[:, 0], [30, 30, 30])
    np.testing.assert_array_equal(matrix[:, 1], [1, 2, 3])
    np.testing.assert_array_equal(matrix[:, 2], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(matrix[:, 3], np.float32([0.1, 0.2, 0.3]))
    assert GENERATOR.output_names == (
        "user_profile:age",
        "item_stats:price",
        "user_profile:activity",
        "item_stats:ctr",
    )


def test_missing_values_become_zero_or_the_configured_default():
    generator = FeatureGenerator.from_config(
        {"features": [raw("u:a", "user"), raw("i:b", "item"), raw("i:c", "item", default=-1.0)]}
    )

    matrix = generator.generate(
        {"u:a": None}, {"i:b": np.array([np.nan, 2.0]), "i:c": [None, True]}
    )

    np.testing.assert_array_equal(matrix, np.float32([[0.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))


def test_absent_inputs_are_missing_everywhere():
    matrix = GENERATOR.generate({}, {}, num_items=2)

    np.testing.assert_array_equal(matrix, np.zeros((2, 4), dtype=np.float32))


def test_training_lists_and_serving_arrays_give_identical_bits():
    ctr = [0.1, None, 0.123456789]
    offline = GENERATOR.generate({"user_profile:age": 41}, {"item_stats:ctr": ctr})
    online = GENERATOR.generate(
        {"user_profile:age": np.float64(41)},
        {"item_stats:ctr": np.array([0.1, np.nan, 0.123456789])},
    )

    assert offline.tobytes() == online.tobytes()


def test_config_round_trips():
    again = FeatureGenerator.from_config(GENERATOR.to_config())

    assert again.to_config() == GENERATOR.to_config()
    assert again.output_names == GENERATOR.output_names


def test_no_features_gives_an_empty_row_per_item():
    matrix = FeatureGenerator([]).generate({}, {}, num_items=3)

    assert matrix.shape == (3, 0)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "features"),
        ({"features": [{"feature_type": "combo_feature"}]}, "features[0].feature_type"),
        ({"features": [{"feature_type": "raw_feature", "expression": "user:x"}]}, "feature_name"),
        ({"features": [raw("a", "shop")]}, "features[0].expression"),
        ({"features": [raw("a", "user"), raw("a", "item")]}, "features"),
        ({"features": [{**raw("a", "user"), "default_value": "zero"}]}, "default_value"),
    ],
)
def test_bad_configs_name_the_entry(config, path):
    with pytest.raises(FeatureConfigError) as error:
        FeatureGenerator.from_config(config)

    assert path in error.value.path


def test_text_for_a_raw_feature_is_refused():
    with pytest.raises(FeatureValueError, match="item_stats:price"):
        GENERATOR.generate({}, {"item_stats:price": ["cheap"]})


def test_item_columns_must_agree_on_the_item_count():
    with pytest.raises(FeatureValueError, match="item count"):
        GENERATOR.generate({}, {"item_stats:price": [1.0], "item_stats:ctr": [1.0, 2.0]})
