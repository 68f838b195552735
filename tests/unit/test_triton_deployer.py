"""TritonDeployer: tritonclient's answers and errors become the registry's (fake client)."""

from __future__ import annotations

import time

import pytest
from tritonclient.utils import InferenceServerException

from services.registry.adapters.deployer import DeployedModel, ModelLoadFailed, Tensor
from services.registry.adapters.triton_deployer import TritonDeployer
from shared.errors import DeadlineExceeded, Unavailable
from shared.request_context import set_deadline

CONFIG = {
    "config": {
        "name": "shop__ranker__v1",
        "max_batch_size": 1024,
        "input": [
            {"name": "user_id", "data_type": "TYPE_INT64", "dims": ["1"]},
            {"name": "genres", "data_type": "TYPE_INT64", "dims": ["3"]},
        ],
        "output": [{"name": "probs_ctr", "data_type": "TYPE_FP32", "dims": ["1"]}],
    }
}


def triton_error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


class FakeClient:
    def __init__(self, error: Exception | None = None, live: bool = True) -> None:
        self.error = error
        self.live = live
        self.calls: list[tuple[str, str, float]] = []

    def _answer(self, call: str, model: str, client_timeout: float, value=None):
        self.calls.append((call, model, client_timeout))
        if self.error is not None:
            raise self.error
        return value

    def load_model(self, model_name, client_timeout=None):
        return self._answer("load", model_name, client_timeout)

    def unload_model(self, model_name, client_timeout=None):
        return self._answer("unload", model_name, client_timeout)

    def is_model_ready(self, model_name, model_version="", client_timeout=None):
        return self._answer("ready", f"{model_name}/{model_version}", client_timeout, True)

    def get_model_config(self, model_name, as_json=False, client_timeout=None):
        assert as_json
        return self._answer("config", model_name, client_timeout, CONFIG)

    def is_server_live(self, client_timeout=None):
        if not self.live:
            raise triton_error("UNAVAILABLE", "failed to connect to all addresses")
        return True


def deployer(client: FakeClient) -> TritonDeployer:
    return TritonDeployer("127.0.0.1:18001", load_timeout_s=90.0, client=client)


def test_config_is_read_into_tensors():
    assert deployer(FakeClient()).deployed("shop__ranker__v1") == DeployedModel(
        1024,
        (Tensor("user_id", "TYPE_INT64", (1,)), Tensor("genres", "TYPE_INT64", (3,))),
        (Tensor("probs_ctr", "TYPE_FP32", (1,)),),
    )


def test_calls_carry_their_timeouts_capped_by_the_request_deadline():
    client = FakeClient()
    subject = deployer(client)
    subject.load("m")
    subject.is_ready("m", "1")
    set_deadline(time.monotonic() + 3.0)
    try:
        subject.load("m")
    finally:
        set_deadline(None)
    assert [call[:2] for call in client.calls] == [("load", "m"), ("ready", "m/1"), ("load", "m")]
    assert client.calls[0][2] == 90.0
    assert client.calls[1][2] == 5.0
    assert 2.0 < client.calls[2][2] <= 3.0


def test_an_unreachable_server_is_unavailable():
    client = FakeClient(triton_error("UNAVAILABLE", "Connection refused"), live=False)
    with pytest.raises(Unavailable, match=r"is unreachable .*Connection refused.*could not load"):
        deployer(client).load("m")


def test_a_live_server_that_cannot_load_the_model_is_a_load_failure():
    # Triton answers UNAVAILABLE itself for a model whose load failed.
    client = FakeClient(triton_error("UNAVAILABLE", "'m' has no available versions"))
    with pytest.raises(ModelLoadFailed, match="has no available versions"):
        deployer(client).deployed("m")
    client = FakeClient(triton_error("INVALID_ARGUMENT", "load failed for model 'm': bad onnx"))
    with pytest.raises(ModelLoadFailed) as caught:
        deployer(client).load("m")
    assert caught.value.reason == "MODEL_LOAD_FAILED"
    assert caught.value.code == "FAILED_PRECONDITION"


def test_a_load_that_outlasts_its_timeout_is_deadline_exceeded():
    client = FakeClient(triton_error("DEADLINE_EXCEEDED", "Deadline Exceeded"))
    with pytest.raises(DeadlineExceeded, match="deploy again"):
        deployer(client).load("m")
