"""The trainers, their ONNX exports, the evaluation and the training config, on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

from shared.feature_generator import FeatureGenerator
from training import config as training_config
from training import dnn, evaluate, gbdt
from training.data import fg_column

FG = {
    "features": [
        {
            "feature_type": "id_feature",
            "feature_name": "item_id",
            "expression": "item:item_id",
            "hash_bucket_size": 200,
            "embedding_name": "item",
        },
        {
            "feature_type": "id_feature",
            "feature_name": "genres",
            "expression": "item:genres",
            "vocab_list": ["a", "b", "c"],
            "value_dimension": 2,
        },
        {"feature_type": "raw_feature", "feature_name": "age", "expression": "user:age"},
        {
            "feature_type": "sequence_feature",
            "feature_name": "history",
            "expression": "user:history",
            "sequence_length": 5,
            "hash_bucket_size": 200,
            "embedding_name": "item",
        },
    ]
}


def synthetic(rows: int, seed: int = 0) -> tuple[FeatureGenerator, dict, np.ndarray, np.ndarray]:
    """Clicks on the first ten items or by users over 50; conversions on even items."""
    rng = np.random.default_rng(seed)
    generator = FeatureGenerator.from_config(FG)
    items = rng.integers(0, 40, rows)
    ages = rng.integers(18, 70, rows)
    clicked = (items < 10) | (ages > 50) | (rng.random(rows) < 0.05)
    converted = clicked & (items % 2 == 0)
    inputs = generator.generate_rows(
        {
            "user": {"age": ages, "history": [rng.integers(0, 40, 5) for _ in range(rows)]},
            "item": {"item_id": items, "genres": [["a", "c"]] * rows},
        },
        rows,
    )
    return generator, inputs, clicked.astype(np.float32), converted.astype(np.float32)


def test_the_dnn_learns_ids_and_numbers_and_its_onnx_export_agrees():
    generator, inputs, clicked, converted = synthetic(4000)
    settings = dnn.DnnSettings(epochs=3, batch_size=128, learning_rate=1e-2, hidden=(32,))

    model, report = dnn.train(generator.signature, inputs, clicked, converted, settings, log=id)
    _, test, test_clicked, _ = synthetic(2000, seed=1)
    predicted = dnn.predict(model, test)
    session = ort.InferenceSession(dnn.to_onnx(model, inputs))
    exported = session.run(list(dnn.OUTPUTS), {name: test[name] for name in generator.output_names})

    assert evaluate.score(test_clicked, predicted["probs_ctr"]).auc > 0.8
    assert report.rows == 4000
    assert [i.name for i in session.get_inputs()] == list(generator.output_names)
    np.testing.assert_allclose(exported[0], predicted["probs_ctr"], atol=1e-5)
    np.testing.assert_allclose(exported[1], predicted["probs_cvr"], atol=1e-5)
    assert ((predicted["probs_cvr"] >= 0) & (predicted["probs_cvr"] <= 1)).all()


def test_the_gbdt_export_takes_one_input_per_fg_output_and_matches_lightgbm():
    generator, inputs, clicked, _ = synthetic(3000)
    models = gbdt.train(
        generator.signature,
        inputs,
        {"probs_ctr": clicked},
        {"probs_ctr": np.ones(len(clicked), dtype=bool)},
        gbdt.GbdtSettings(num_trees=20),
    )

    session = ort.InferenceSession(gbdt.to_onnx(generator.signature, models))
    exported = session.run(["probs_ctr"], {name: inputs[name] for name in generator.output_names})

    assert exported[0].shape == (3000, 1)
    expected = gbdt.predict(generator.signature, models, inputs)["probs_ctr"]
    np.testing.assert_allclose(exported[0], expected, atol=1e-5)


def test_the_popularity_baseline_ranks_by_training_clicks():
    train_items = np.array([1, 1, 1, 2, 3, 3])
    train = {"probs_ctr": np.float32([1, 1, 0, 0, 1, 0])}
    test_items = np.array([1, 2, 3, 1])
    test = {"probs_ctr": np.float32([1, 0, 0, 1])}

    found = evaluate.popularity_baseline(train_items, train, test_items, test)

    # Item 1 had two training clicks, 3 one, 2 none: the ranking is perfect here.
    assert found["probs_ctr"].auc == 1.0
    assert found["probs_ctr"].rows == 4


def test_cvr_is_judged_on_clicked_rows_only():
    clicked = np.float32([1, 0, 1])

    assert evaluate.evaluation_rows("probs_cvr", clicked).tolist() == [True, False, True]
    assert evaluate.evaluation_rows("probs_ctr", clicked).all()


def test_arrow_columns_become_the_shapes_the_online_path_gives():
    table = pa.table(
        {
            "n": pa.array([1, None], pa.int64()),
            "m": pa.array([[("a", 1.0)], None], pa.map_(pa.string(), pa.float64())),
            "l": pa.array([[1, 2], None], pa.list_(pa.int64())),
        }
    )

    numbers = fg_column(table.column("n"))
    assert numbers.dtype == np.float64 and np.isnan(numbers[1])
    assert fg_column(table.column("m")) == [[("a", 1.0)], None]
    assert fg_column(table.column("l"))[0].tolist() == [1, 2]


def write_config(tmp_path: Path, **changes) -> Path:
    (tmp_path / "fg.json").write_text(json.dumps(FG))
    settings = {
        "project": "p",
        "model": "m",
        "model_feature_set": "s",
        "fg": "fg.json",
        "trainer": "dnn",
        "train_rows": "train.parquet",
        "test_rows": "test.parquet",
        "labels": {"probs_ctr": "clicked", "probs_cvr": "converted"},
        **changes,
    }
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(settings))
    return path


def test_a_config_resolves_paths_next_to_itself(tmp_path):
    config = training_config.load(write_config(tmp_path))

    assert config.fg == tmp_path / "fg.json"
    assert config.train_rows == tmp_path / "train.parquet"
    assert config.generator().output_names == ("item_id", "genres", "age", "history")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trainer": "xgboost"}, "trainer"),
        ({"epochs": 3}, "epochs"),
        ({"labels": {"probs_ctr": "clicked"}}, "two heads"),
        ({"test_rows": None}, "train_rows"),
        ({"dnn": {"epochs": 0}}, "dnn.epochs"),
    ],
)
def test_bad_configs_name_the_setting(tmp_path, changes, message):
    path = write_config(tmp_path, **changes)

    with pytest.raises(training_config.ConfigError, match=message):
        training_config.load(path)


def test_a_bad_fg_document_is_reported_with_its_file_and_entry(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "fg.json").write_text(json.dumps({"features": [{"feature_type": "x"}]}))

    with pytest.raises(training_config.ConfigError, match=r"fg.json: features\[0\].feature_type"):
        training_config.load(path)
