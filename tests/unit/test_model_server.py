"""TritonModelServer turns tritonclient and gRPC errors into domain errors (fake client)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from shared.errors import (
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from shared.model_server import TritonModelServer, check_models_ready

ADDRESS = "127.0.0.1:18001"
FEATURES = {"features": np.zeros((2, 8), dtype=np.float32)}


class FakeResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


class FakeClient:
    """tritonclient.grpc.InferenceServerClient's surface, raising `error` when set."""

    def __init__(self, error: Exception | None = None, result: FakeResult | None = None) -> None:
        self.error = error
        self.result = result or FakeResult({"probs_ctr": np.full((2, 1), 0.5, np.float32)})
        self.calls: list[dict] = []
        self.closed = False

    def infer(self, model_name, inputs, **kwargs):
        self.calls.append({"model": model_name, "inputs": inputs, **kwargs})
        if self.error is not None:
            raise self.error
        return self.result

    def is_server_ready(self, **kwargs):
        self.calls.append({"is_server_ready": kwargs})
        if self.error is not None:
            raise self.error
        return True

    def is_model_ready(self, model_name, **kwargs):
        self.calls.append({"is_model_ready": model_name, **kwargs})
        if self.error is not None:
            raise self.error
        return model_name == "ranker"

    def close(self) -> None:
        self.closed = True


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def triton_error(status: str, message: str) -> InferenceServerException:
    # tritonclient.grpc builds its exceptions this way from a grpc.RpcError.
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


def server_raising(error: Exception, timeout_s: float = 2.0) -> TritonModelServer:
    return TritonModelServer(ADDRESS, timeout_s, client=FakeClient(error))


def infer(server: TritonModelServer, version: str = "") -> dict[str, np.ndarray]:
    return server.infer("ranker", FEATURES, ["probs_ctr"], version=version)


def test_infer_sends_triton_dtypes_and_timeout_and_returns_numpy():
    client = FakeClient()
    server = TritonModelServer(ADDRESS, 0.5, client=client)

    result = server.infer("ranker", FEATURES, ["probs_ctr"], version="3")

    np.testing.assert_array_equal(result["probs_ctr"], np.full((2, 1), 0.5, np.float32))
    call = client.calls[0]
    assert call["model"] == "ranker"
    assert call["model_version"] == "3"
    assert call["client_timeout"] == 0.5
    (tensor,) = call["inputs"]
    assert (tensor.name(), tensor.datatype(), tensor.shape()) == ("features", "FP32", [2, 8])
    assert [o.name() for o in call["outputs"]] == ["probs_ctr"]


@pytest.mark.parametrize(
    ("status", "message", "expected", "reason"),
    [
        ("NOT_FOUND", "Request for unknown model: 'x' is not found", NotFound, "MODEL_NOT_FOUND"),
        (
            "NOT_FOUND",
            "Request for unknown model: 'ranker' has no available versions",
            Unavailable,
            "MODEL_NOT_READY",
        ),
        (
            "INVALID_ARGUMENT",
            "[request id: <id_unknown>] unexpected shape for input 'features' for model "
            "'ranker'. Expected [-1,8], got [2,7]. NOTE: Setting a non-zero max_batch_size ...",
            InvalidArgument,
            "INVALID_MODEL_INPUT",
        ),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses",
            Unavailable,
            "MODEL_SERVER_UNAVAILABLE",
        ),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded, "MODEL_SERVER_TIMEOUT"),
        ("RESOURCE_EXHAUSTED", "queue is full", ResourceExhausted, "MODEL_SERVER_BUSY"),
        ("INTERNAL", "ranker: inference failed: boom", DomainError, "MODEL_SERVER_ERROR"),
    ],
)
def test_triton_errors_become_domain_errors(status, message, expected, reason):
    with pytest.raises(expected) as excinfo:
        infer(server_raising(triton_error(status, message)))

    error = excinfo.value
    assert type(error) is expected
    assert error.reason == reason
    assert ADDRESS in error.message or "ranker" in error.message
    # No vendor type reaches the caller, not even as the explicit cause.
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_invalid_argument_names_the_tensor_and_drops_triton_noise():
    message = (
        "[request id: <id_unknown>] unexpected shape for input 'features' for model 'ranker'. "
        "Expected [-1,8], got [2,7]. NOTE: Setting a non-zero max_batch_size in the model config"
    )
    with pytest.raises(InvalidArgument) as excinfo:
        infer(server_raising(triton_error("INVALID_ARGUMENT", message)))

    assert excinfo.value.field == "inputs.features"
    assert "Expected [-1,8], got [2,7]" in excinfo.value.message
    assert "request id" not in excinfo.value.message
    assert "NOTE" not in excinfo.value.message


def test_unknown_output_is_invalid_argument_on_outputs():
    error = triton_error("INVALID_ARGUMENT", "unexpected inference output 'nope' for model 'r'")
    with pytest.raises(InvalidArgument) as excinfo:
        infer(server_raising(error))
    assert excinfo.value.field == "outputs.nope"


def test_not_found_mentions_the_version():
    error = triton_error("NOT_FOUND", "Request for unknown model: 'ranker' version 7 is not found")
    with pytest.raises(NotFound, match="model 'ranker' version 7"):
        infer(server_raising(error), version="7")


def test_deadline_message_gives_the_timeout():
    with pytest.raises(DeadlineExceeded, match=r"within 0\.25s"):
        infer(server_raising(triton_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), 0.25))


def test_unavailable_says_how_to_start_triton():
    with pytest.raises(Unavailable, match="make triton"):
        infer(server_raising(triton_error("UNAVAILABLE", "Connection refused")))


def test_raw_grpc_errors_are_translated_too():
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    with pytest.raises(Unavailable, match="Socket closed"):
        infer(server_raising(error))


def test_unsupported_dtype_is_rejected_before_any_call():
    client = FakeClient()
    server = TritonModelServer(ADDRESS, client=client)
    with pytest.raises(InvalidArgument) as excinfo:
        server.infer("ranker", {"features": np.zeros((2, 8), np.complex64)}, ["probs_ctr"])
    assert excinfo.value.field == "inputs.features"
    assert client.calls == []


def test_missing_output_in_answer_is_an_error():
    client = FakeClient(result=FakeResult({}))
    with pytest.raises(DomainError, match="without outputs"):
        infer(TritonModelServer(ADDRESS, client=client))


def test_is_ready_is_false_instead_of_raising():
    server = server_raising(triton_error("UNAVAILABLE", "Connection refused"))
    assert server.is_ready() is False
    assert server.is_ready("ranker") is False


def test_is_ready_passes_the_timeout():
    client = FakeClient()
    server = TritonModelServer(ADDRESS, 0.75, client=client)
    assert server.is_ready() is True
    assert server.is_ready("ranker") is True
    assert server.is_ready("other") is False
    assert all(call.get("client_timeout") == 0.75 for call in client.calls[1:])
    assert client.calls[0] == {"is_server_ready": {"client_timeout": 0.75}}


def test_check_models_ready_names_models_that_are_not_ready():
    server = TritonModelServer(ADDRESS, client=FakeClient())
    check_models_ready(server, ["ranker"])
    with pytest.raises(Unavailable) as excinfo:
        check_models_ready(server, ["ranker", "embedder", "other"])
    assert excinfo.value.reason == "MODEL_NOT_READY"
    assert excinfo.value.metadata == {"models": "embedder,other"}
    assert "['embedder', 'other']" in excinfo.value.message


def test_check_models_ready_when_server_is_down():
    server = server_raising(triton_error("UNAVAILABLE", "Connection refused"))
    with pytest.raises(Unavailable) as excinfo:
        check_models_ready(server, ["ranker"])
    assert excinfo.value.reason == "MODEL_SERVER_UNAVAILABLE"
    assert ADDRESS in excinfo.value.message


def test_close_closes_the_client():
    client = FakeClient()
    with TritonModelServer(ADDRESS, client=client):
        pass
    assert client.closed
