"""`ModelDeployer` on NVIDIA Triton's model repository API (KServe v2 gRPC).

Triton must run with `--model-control-mode=explicit`: then it loads a model only when asked,
reading it from its model repository (the trainer writes the files there; the registry
needs no access to them). Every tritonclient error is translated here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from services.registry.adapters.deployer import DeployedModel, ModelLoadFailed, Tensor
from shared.errors import DeadlineExceeded, DomainError, Unavailable
from shared.model_server import START_HINT, status_and_message
from shared.request_context import seconds_remaining

T = TypeVar("T")
LIVENESS_TIMEOUT_S = 1.0


class TritonDeployer:
    """Thread-safe, like tritonclient's unary calls."""

    def __init__(
        self,
        address: str,
        *,
        load_timeout_s: float = 120.0,
        call_timeout_s: float = 5.0,
        client: Any = None,
    ) -> None:
        self.address = address
        self._load_timeout_s = load_timeout_s
        self._call_timeout_s = call_timeout_s
        # `client` lets unit tests substitute a fake with tritonclient's interface.
        self._client = client if client is not None else triton_grpc.InferenceServerClient(address)

    def __str__(self) -> str:
        return f"Triton at {self.address}"

    def load(self, model: str) -> None:
        self._call("load", model, self._load_timeout_s, self._client.load_model)

    def unload(self, model: str) -> None:
        self._call("unload", model, self._call_timeout_s, self._client.unload_model)

    def is_ready(self, model: str, version: str) -> bool:
        def ready(name: str, client_timeout: float) -> bool:
            return bool(
                self._client.is_model_ready(
                    name, model_version=version, client_timeout=client_timeout
                )
            )

        return self._call("check", model, self._call_timeout_s, ready)

    def deployed(self, model: str) -> DeployedModel:
        def config(name: str, client_timeout: float) -> dict[str, Any]:
            return self._client.get_model_config(name, as_json=True, client_timeout=client_timeout)

        found = self._call("read the configuration of", model, self._call_timeout_s, config)
        return _deployed(found.get("config", {}))

    def close(self) -> None:
        self._client.close()

    def _call(self, action: str, model: str, timeout_s: float, call: Callable[..., T]) -> T:
        remaining = seconds_remaining()
        timeout = timeout_s if remaining is None else max(0.1, min(timeout_s, remaining))
        try:
            return call(model, client_timeout=timeout)
        except (InferenceServerException, grpc.RpcError) as exc:
            raise self._translate(exc, action, model, timeout) from None

    def _translate(
        self,
        exc: InferenceServerException | grpc.RpcError,
        action: str,
        model: str,
        timeout_s: float,
    ) -> DomainError:
        status, message = status_and_message(exc)
        if status == "DEADLINE_EXCEEDED":
            return DeadlineExceeded(
                f"{self} did not finish the {action} of model '{model}' within "
                f"{timeout_s:g}s; it may still be loading: deploy again to see the outcome",
                reason="MODEL_SERVER_TIMEOUT",
            )
        # Triton answers UNAVAILABLE for a model it failed to load as well as the channel
        # does for a server that is down: only a server that does not answer is unavailable.
        if status == "UNAVAILABLE" and not self._live():
            return Unavailable(
                f"{self} is unreachable ({message}): could not {action} model '{model}'; "
                f"{START_HINT}",
                reason="MODEL_SERVER_UNAVAILABLE",
            )
        return ModelLoadFailed(
            f"{self} could not {action} model '{model}': {message}",
            detail=f"Triton could not {action} it: {message}",
        )

    def _live(self) -> bool:
        try:
            return bool(self._client.is_server_live(client_timeout=LIVENESS_TIMEOUT_S))
        except (InferenceServerException, grpc.RpcError):
            return False


def _deployed(config: dict[str, Any]) -> DeployedModel:
    return DeployedModel(
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tuple(_tensor(spec) for spec in config.get("input", [])),
        outputs=tuple(_tensor(spec) for spec in config.get("output", [])),
    )


def _tensor(spec: dict[str, Any]) -> Tensor:
    # Proto JSON omits defaults (TYPE_INVALID) and spells int64 dims as strings.
    return Tensor(
        name=spec.get("name", ""),
        data_type=spec.get("data_type", "TYPE_INVALID"),
        dims=tuple(int(dim) for dim in spec.get("dims", [])),
    )
