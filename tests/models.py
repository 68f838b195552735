"""Small real ONNX ranking models with one input per feature, for registry and Triton tests.

`ranker_onnx(signature, seed)` builds sigmoid(concat(float(inputs)) · W + b), split into one
[batch, 1] output per signature output; `expected_scores` computes the same in numpy, so a
test can tell which version answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from recstack.registry.v1 import model_pb2

from training.artifacts import NUMPY_TYPES, ONNX_TYPES

OPSET = 17
IR_VERSION = 8  # loads in the backend venv's onnxruntime (see infra/triton/build_models.py)
OUTPUTS = ("probs_ctr", "probs_cvr")
V1_INPUTS = (
    ("user_id", "TYPE_INT64", (1,)),
    ("genres", "TYPE_INT64", (3,)),
    ("age", "TYPE_FP32", (1,)),
)
# A later FG adds a request-context feature: a different input signature.
V2_INPUTS = (*V1_INPUTS, ("hour", "TYPE_FP32", (1,)))


def signature(
    inputs: Sequence[tuple[str, str, Sequence[int]]] = V1_INPUTS,
    outputs: Sequence[str] = OUTPUTS,
) -> model_pb2.ModelSignature:
    return model_pb2.ModelSignature(
        inputs=[model_pb2.TensorSpec(name=n, data_type=t, dims=list(d)) for n, t, d in inputs],
        outputs=[model_pb2.TensorSpec(name=n, data_type="TYPE_FP32", dims=[1]) for n in outputs],
    )


def _weights(spec: model_pb2.ModelSignature, seed: int) -> tuple[np.ndarray, np.ndarray]:
    width = sum(int(np.prod(tensor.dims)) for tensor in spec.inputs)
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.3, (width, len(spec.outputs))).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (len(spec.outputs),)).astype(np.float32)
    return weight, bias


def ranker_onnx(spec: model_pb2.ModelSignature, seed: int = 0) -> bytes:
    weight, bias = _weights(spec, seed)
    nodes, flat = [], []
    initializers = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.ones(len(spec.outputs), dtype=np.int64), "split"),
    ]
    for tensor in spec.inputs:
        width = int(np.prod(tensor.dims))
        initializers.append(
            numpy_helper.from_array(np.array([-1, width], dtype=np.int64), f"{tensor.name}_shape")
        )
        nodes += [
            helper.make_node("Cast", [tensor.name], [f"{tensor.name}_f"], to=TensorProto.FLOAT),
            helper.make_node(
                "Reshape", [f"{tensor.name}_f", f"{tensor.name}_shape"], [f"{tensor.name}_2d"]
            ),
        ]
        flat.append(f"{tensor.name}_2d")
    nodes += [
        helper.make_node("Concat", flat, ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Split", ["probs", "split"], [t.name for t in spec.outputs], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ranker",
        inputs=[
            helper.make_tensor_value_info(t.name, ONNX_TYPES[t.data_type], ["batch", *t.dims])
            for t in spec.inputs
        ],
        outputs=[
            helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["batch", 1])
            for t in spec.outputs
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def batch(spec: model_pb2.ModelSignature, size: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs of the signature for `size` items."""
    rng = np.random.default_rng(seed)
    return {
        t.name: rng.integers(0, 10, (size, *t.dims)).astype(NUMPY_TYPES[t.data_type])
        for t in spec.inputs
    }


def expected_scores(
    spec: model_pb2.ModelSignature, inputs: Mapping[str, np.ndarray], seed: int = 0
) -> dict[str, np.ndarray]:
    weight, bias = _weights(spec, seed)
    features = np.concatenate(
        [inputs[t.name].reshape(len(inputs[t.name]), -1).astype(np.float32) for t in spec.inputs],
        axis=1,
    )
    probs = 1.0 / (1.0 + np.exp(-(features @ weight + bias)))
    return {t.name: probs[:, [i]] for i, t in enumerate(spec.outputs)}


def constant_onnx(spec: model_pb2.ModelSignature, value: float = 0.5) -> bytes:
    """A graph answering `value` for every item whatever its inputs' types (strings too)."""
    first = spec.inputs[0].name
    nodes = [
        helper.make_node("Shape", [first], ["shape"], start=0, end=1),
        helper.make_node("Concat", ["shape", "one"], ["out_shape"], axis=0),
        *(
            helper.make_node(
                "ConstantOfShape",
                ["out_shape"],
                [t.name],
                value=numpy_helper.from_array(np.array([value], dtype=np.float32)),
            )
            for t in spec.outputs
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        inputs=[
            helper.make_tensor_value_info(t.name, ONNX_TYPES[t.data_type], ["batch", *t.dims])
            for t in spec.inputs
        ],
        outputs=[
            helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["batch", 1])
            for t in spec.outputs
        ],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)
