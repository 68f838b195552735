"""The `gbdt` trainer: LightGBM, one binary classifier per model output, exported to ONNX.

The FG's outputs are laid side by side as one float matrix (index outputs as their row
numbers); onnxmltools converts each booster with a single `features` input. The exported
graph then gets the same front as the dnn's: one input per FG output (Cast to float, Concat),
and one `[batch, 1]` probability per output (the positive class), so the rank stage and the
Triton config treat both trainers alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lightgbm
import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from shared.feature_generator import INT64, TensorSpec

# The newest opsets onnxmltools' LightGBM converter writes; onnxruntime in Triton's backend
# venv and Triton's own onnxruntime backend load them.
ONNX_OPSET = 15
ML_OPSET = 1
IR_VERSION = 8


@dataclass(frozen=True)
class GbdtSettings:
    num_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_child_samples: int = 20
    seed: int = 20261202


def matrix(signature: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [
            inputs[spec.name].reshape(len(inputs[spec.name]), -1).astype(np.float32)
            for spec in signature
        ],
        axis=1,
    )


def train(
    signature: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    rows_of: Mapping[str, np.ndarray],
    settings: GbdtSettings,
) -> dict[str, lightgbm.LGBMClassifier]:
    """One classifier per output, each fitted on the rows `rows_of[output]` selects."""
    features = matrix(signature, inputs)
    models = {}
    for output, label in labels.items():
        rows = rows_of[output]
        model = lightgbm.LGBMClassifier(
            n_estimators=settings.num_trees,
            num_leaves=settings.num_leaves,
            learning_rate=settings.learning_rate,
            min_child_samples=settings.min_child_samples,
            random_state=settings.seed,
            n_jobs=2,
            verbose=-1,
        )
        model.fit(features[rows], label[rows])
        models[output] = model
    return models


def predict(
    signature: Sequence[TensorSpec],
    models: Mapping[str, lightgbm.LGBMClassifier],
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    features = matrix(signature, inputs)
    return {
        output: model.predict_proba(features)[:, 1:2].astype(np.float32)
        for output, model in models.items()
    }


def to_onnx(
    signature: Sequence[TensorSpec], models: Mapping[str, lightgbm.LGBMClassifier]
) -> bytes:
    width = sum(math.prod(spec.dims) for spec in signature)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    for spec in signature:
        nodes.append(
            helper.make_node("Cast", [spec.name], [f"{spec.name}__f"], to=TensorProto.FLOAT)
        )
    nodes.append(
        helper.make_node("Concat", [f"{spec.name}__f" for spec in signature], ["features"], axis=1)
    )
    initializers.append(helper.make_tensor("positive", TensorProto.INT64, [1], [1]))
    initializers.append(helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]))
    initializers.append(helper.make_tensor("two", TensorProto.INT64, [1], [2]))
    for output, model in models.items():
        booster = convert_lightgbm(
            model,
            initial_types=[("features", FloatTensorType([None, width]))],
            zipmap=False,
            target_opset=ONNX_OPSET,
        )
        graph = onnx.compose.add_prefix_graph(booster.graph, f"{output}__")
        for node in graph.node:
            node.input[:] = ["features" if i == f"{output}__features" else i for i in node.input]
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        probabilities = f"{output}__probabilities"
        # Column 1 of [batch, 2]: the positive class, kept two-dimensional.
        nodes.append(
            helper.make_node("Slice", [probabilities, "positive", "two", "one_axis"], [output])
        )
    graph = helper.make_graph(
        nodes,
        "gbdt",
        inputs=[
            helper.make_tensor_value_info(
                spec.name,
                TensorProto.INT64 if spec.dtype == INT64 else TensorProto.FLOAT,
                ["batch", *spec.dims],
            )
            for spec in signature
        ],
        outputs=[
            helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1])
            for output in models
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid("ai.onnx.ml", ML_OPSET),
        ],
        producer_name="recstack.training.gbdt",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()
