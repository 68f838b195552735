"""The real tritonserver (CPU, Python backend) serving `ranker` through TritonModelServer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, TritonServer
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.model_server import TritonModelServer, check_models_ready

RANKER = "ranker"
RANKER_ONNX = DEFAULT_MODEL_REPOSITORY / RANKER / "1" / "model.onnx"
GPU_CONFIG = REPO_ROOT / "infra" / "triton" / "gpu" / "ranker.config.pbtxt"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ranker_reference(triton_server: TritonServer):
    """The ranker's maths in numpy, from the weights stored in the served ONNX file.

    The app venv has no onnxruntime (it pins numpy 2; the backend venv has numpy<2), so the
    reference is the graph's MLP recomputed from its initializers.
    """
    model = onnx.load(RANKER_ONNX)
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["MatMul", "Add", "Relu", "MatMul", "Add", "Sigmoid"], ops
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}

    def predict(features: np.ndarray) -> np.ndarray:
        hidden = np.maximum(features.astype(np.float64) @ weights["w1"] + weights["b1"], 0.0)
        return 1.0 / (1.0 + np.exp(-(hidden @ weights["w2"] + weights["b2"])))

    return predict


def features(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def test_server_and_models_are_ready(triton_server: TritonServer, triton_model_server):
    assert RANKER in triton_server.models
    assert triton_model_server.is_ready()
    assert triton_model_server.is_ready(RANKER)
    assert not triton_model_server.is_ready("no_such_model")
    check_models_ready(triton_model_server, [RANKER])


def test_check_models_ready_names_the_missing_models(triton_model_server):
    with pytest.raises(Unavailable) as excinfo:
        check_models_ready(triton_model_server, [RANKER, "no_such_model"])
    assert excinfo.value.code == "UNAVAILABLE"
    assert excinfo.value.reason == "MODEL_NOT_READY"
    assert "no_such_model" in excinfo.value.message
    assert excinfo.value.metadata["models"] == "no_such_model"


def test_infer_batch_of_500_matches_the_onnx_weights(triton_model_server, ranker_reference):
    batch = features(500, seed=1)

    result = triton_model_server.infer(RANKER, {"features": batch}, ["probs_ctr"])

    probs = result["probs_ctr"]
    assert probs.shape == (500, 1)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, ranker_reference(batch), rtol=0, atol=TOLERANCE)
    # Not saturated: the comparison above would be trivial if every score were 0 or 1.
    assert float(probs.std()) > 0.05


def test_infer_with_explicit_version(triton_model_server, ranker_reference):
    batch = features(3, seed=2)
    result = triton_model_server.infer(RANKER, {"features": batch}, ["probs_ctr"], version="1")
    np.testing.assert_allclose(result["probs_ctr"], ranker_reference(batch), atol=TOLERANCE)


def test_unknown_model_is_not_found(triton_model_server):
    with pytest.raises(NotFound) as excinfo:
        triton_model_server.infer("no_such_model", {"features": features(2, 0)}, ["probs_ctr"])
    assert excinfo.value.code == "NOT_FOUND"
    assert "no_such_model" in excinfo.value.message


def test_unknown_version_is_not_found(triton_model_server):
    with pytest.raises(NotFound, match="version 7"):
        triton_model_server.infer(RANKER, {"features": features(2, 0)}, ["probs_ctr"], version="7")


def test_wrong_input_shape_is_invalid_argument(triton_model_server):
    bad = np.zeros((4, 7), dtype=np.float32)
    with pytest.raises(InvalidArgument) as excinfo:
        triton_model_server.infer(RANKER, {"features": bad}, ["probs_ctr"])
    assert excinfo.value.code == "INVALID_ARGUMENT"
    assert excinfo.value.field == "inputs.features"
    assert "[4,7]" in excinfo.value.message


def test_wrong_input_dtype_is_invalid_argument(triton_model_server):
    bad = np.zeros((4, 8), dtype=np.float64)
    with pytest.raises(InvalidArgument) as excinfo:
        triton_model_server.infer(RANKER, {"features": bad}, ["probs_ctr"])
    assert excinfo.value.field == "inputs.features"
    assert "FP64" in excinfo.value.message


def test_concurrent_requests_get_their_own_answers(triton_model_server, ranker_reference):
    # Distinct batch sizes per thread: if model.py mixed up requests that Triton's dynamic
    # batcher handed it together, rows or shapes would land in the wrong response.
    batches = [features(rows, seed=100 + i) for i, rows in enumerate(range(50, 450, 50))]

    def call(batch: np.ndarray) -> np.ndarray:
        return [
            triton_model_server.infer(RANKER, {"features": batch}, ["probs_ctr"])["probs_ctr"]
            for _ in range(10)
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, batches))

    for batch, repeats in zip(batches, answers, strict=True):
        expected = ranker_reference(batch)
        for probs in repeats:
            assert probs.shape == (len(batch), 1)
            np.testing.assert_allclose(probs, expected, rtol=0, atol=TOLERANCE)


def test_stopped_server_is_unavailable(tmp_path):
    with TritonServer(models=[RANKER], log_path=tmp_path / "tritonserver.log") as server:
        client = TritonModelServer(server.grpc_address, timeout_s=5.0)
        assert client.is_ready(RANKER)
    try:
        assert not client.is_ready()
        assert not client.is_ready(RANKER)
        with pytest.raises(Unavailable) as excinfo:
            client.infer(RANKER, {"features": features(2, 0)}, ["probs_ctr"])
        assert excinfo.value.code == "UNAVAILABLE"
        assert server.grpc_address in excinfo.value.message
        with pytest.raises(Unavailable):
            check_models_ready(client, [RANKER])
    finally:
        client.close()


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_gpu_config_serves_the_same_tensors_with_onnxruntime():
    # No GPU or onnxruntime backend here; this guards the promise that swapping config.pbtxt
    # is all a GPU deployment changes.
    cpu = _config(DEFAULT_MODEL_REPOSITORY / RANKER / "config.pbtxt")
    gpu = _config(GPU_CONFIG)

    assert (cpu.backend, gpu.platform) == ("python", "onnxruntime_onnx")
    assert gpu.name == cpu.name == RANKER
    assert gpu.max_batch_size == cpu.max_batch_size
    assert gpu.input == cpu.input
    assert gpu.output == cpu.output
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
