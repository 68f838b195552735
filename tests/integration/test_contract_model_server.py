"""The `ModelServer` contract, run against Triton (the session's tritonserver) and against the
in-memory model server unit tests use, on the repository's `ranker` signature."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from shared.errors import InvalidArgument, NotFound
from shared.model_server import ModelServer, TritonModelServer
from tests.fakes.model_server import InMemoryModelServer, ranker

FEATURES = 8


@pytest.fixture(params=["triton", "memory"])
def server(request: pytest.FixtureRequest) -> Iterator[ModelServer]:
    if request.param == "memory":
        yield InMemoryModelServer({"ranker": ranker(np.linspace(-1, 1, FEATURES))})
        return
    triton = request.getfixturevalue("triton_server")
    with TritonModelServer(triton.grpc_address, timeout_s=10.0) as real:
        yield real


def _features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, FEATURES), dtype=np.float32)


def test_readiness_of_the_server_and_of_each_model(server):
    assert server.is_ready()
    assert server.is_ready("ranker")
    assert not server.is_ready("no_such_model")


def test_infer_returns_each_requested_output_one_row_per_input_row(server):
    features = _features(5)
    [name] = server.infer("ranker", {"features": features}, ["probs_ctr"])
    probs = server.infer("ranker", {"features": features}, ["probs_ctr"])["probs_ctr"]
    assert name == "probs_ctr"
    assert probs.shape == (5, 1) and probs.dtype == np.float32
    # Rows are scored independently: a row alone scores as it does in the batch.
    alone = server.infer("ranker", {"features": features[2:3]}, ["probs_ctr"])["probs_ctr"]
    np.testing.assert_allclose(alone[0], probs[2], rtol=1e-5)
    again = server.infer("ranker", {"features": features}, ["probs_ctr"], version="1")
    np.testing.assert_allclose(again["probs_ctr"], probs, rtol=1e-5)


def test_an_unknown_model_or_version_is_not_found(server):
    with pytest.raises(NotFound):
        server.infer("no_such_model", {"features": _features(1)}, ["probs_ctr"])
    with pytest.raises(NotFound):
        server.infer("ranker", {"features": _features(1)}, ["probs_ctr"], version="99")


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ({"features": np.zeros((2, FEATURES), np.float64)}, ["probs_ctr"]),
        ({"features": np.zeros((2, FEATURES - 1), np.float32)}, ["probs_ctr"]),
        ({"other": np.zeros((2, FEATURES), np.float32)}, ["probs_ctr"]),
        ({"features": np.zeros((2, FEATURES), np.float32)}, ["no_such_output"]),
    ],
    ids=["dtype", "dims", "input_name", "output_name"],
)
def test_a_request_the_model_cannot_take_is_invalid_argument(server, inputs, outputs):
    with pytest.raises(InvalidArgument) as caught:
        server.infer("ranker", inputs, outputs)
    assert caught.value.field.startswith(("inputs", "outputs"))
