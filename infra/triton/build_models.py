"""Build the ONNX files of the Triton model repository.

    python infra/triton/build_models.py MODEL_REPO_DIR [--model NAME ...]

Each model is built from fixed-seed numpy weights with `onnx.helper` only (no training
framework), so a fresh checkout gets byte-identical files and tests can recompute the
expected outputs from the weights stored in the file. The files are build outputs
(gitignored); `config.pbtxt` and `model.py` beside them are source.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 with IR version 8 loads in every onnxruntime the backend venv may pin and in
# Triton's onnxruntime backend; onnx's own defaults follow its newest release and would not.
OPSET = 17
IR_VERSION = 8
PRODUCER = "recstack.build_models"
MODEL_VERSION = "1"

RANKER_FEATURES = 8
RANKER_HIDDEN = 16
RANKER_SEED = 20240601


def _initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name=name)


def build_ranker() -> onnx.ModelProto:
    """A 2-layer MLP click-through ranker: sigmoid(relu(x W1 + b1) W2 + b2)."""
    rng = np.random.default_rng(RANKER_SEED)
    # Scaled so the logits stay in sigmoid's sensitive range for standard-normal inputs,
    # which keeps the tests' numeric comparisons meaningful.
    w1 = rng.normal(0.0, 1.0 / np.sqrt(RANKER_FEATURES), (RANKER_FEATURES, RANKER_HIDDEN))
    b1 = rng.normal(0.0, 0.1, (RANKER_HIDDEN,))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(RANKER_HIDDEN), (RANKER_HIDDEN, 1))
    b2 = rng.normal(0.0, 0.1, (1,))

    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h_mm"], name="dense1"),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"], name="bias1"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="relu1"),
        helper.make_node("MatMul", ["h", "w2"], ["logit_mm"], name="dense2"),
        helper.make_node("Add", ["logit_mm", "b2"], ["logit"], name="bias2"),
        helper.make_node("Sigmoid", ["logit"], ["probs_ctr"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "ranker",
        inputs=[
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", RANKER_FEATURES])
        ],
        outputs=[helper.make_tensor_value_info("probs_ctr", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            _initializer("w1", w1),
            _initializer("b1", b1),
            _initializer("w2", w2),
            _initializer("b2", b2),
        ],
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# A new model: add its builder here, and its `config.pbtxt` and `1/model.py` beside the others.
BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "ranker": build_ranker,
}


def model_path(repo: Path, name: str) -> Path:
    return repo / name / MODEL_VERSION / "model.onnx"


def write_atomically(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it already holds exactly that; True if it wrote.

    A temporary file in the same directory renamed over the target means Triton (or a
    concurrent build) never sees a half-written model.
    """
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def build(repo: Path, names: list[str]) -> list[Path]:
    written = []
    for name in names:
        path = model_path(repo, name)
        # Deterministic serialization keeps reruns byte-identical, so unchanged models are
        # left untouched and Triton's repository poller sees no spurious change.
        data = BUILDERS[name]().SerializeToString(deterministic=True)
        if write_atomically(path, data):
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="Triton model repository directory")
    parser.add_argument(
        "--model",
        action="append",
        choices=sorted(BUILDERS),
        help="build only this model (repeatable); default: all",
    )
    args = parser.parse_args(argv)
    names = args.model or sorted(BUILDERS)
    written = build(args.repo, names)
    for name in names:
        path = model_path(args.repo, name)
        state = "written" if path in written else "unchanged"
        print(f"{name}: {path} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
