"""Model inference behind a small interface, with NVIDIA Triton (KServe v2 gRPC) as the adapter.

Domain code calls `ModelServer.infer` with numpy arrays and gets numpy arrays back; every
vendor error is translated here, at the edge, into `shared.errors` (as tritonclient itself
wraps gRPC errors), so no tritonclient or grpc type escapes this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from shared.errors import (
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

START_HINT = "is tritonserver running? (`make triton`, or `make up` for the whole stack)"
# Triton prefixes request errors with an id that is always unknown for unnamed requests.
_REQUEST_ID_PREFIX = re.compile(r"^\[request id: [^\]]*\]\s*")
# The advice after "NOTE:" on shape errors is for model authors, not for callers.
_NOTE_SUFFIX = re.compile(r"\s*NOTE: .*$", re.DOTALL)
_TENSOR_IN_MESSAGE = re.compile(r"\b(input|output) '([^']+)'")


class ModelServer(Protocol):
    """Runs named models on named numpy tensors."""

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        """Run `model` (latest `version` when empty) and return the requested outputs.

        Raises NotFound, InvalidArgument, Unavailable or DeadlineExceeded.
        """
        ...

    def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (model None) or that model can serve now; never raises."""
        ...


def check_models_ready(server: ModelServer, models: Iterable[str]) -> None:
    """Raise Unavailable naming every model that cannot serve yet (a service startup check)."""
    wanted = list(dict.fromkeys(models))
    if not server.is_ready():
        raise Unavailable(
            f"model server {server} is not ready, so models {wanted} cannot serve: {START_HINT}",
            reason="MODEL_SERVER_UNAVAILABLE",
        )
    not_ready = [name for name in wanted if not server.is_ready(name)]
    if not_ready:
        raise Unavailable(
            f"models {not_ready} are not ready on model server {server}: check that they are "
            "in the model repository, built (`make models`) and loaded, and see the server log",
            reason="MODEL_NOT_READY",
            metadata={"models": ",".join(not_ready)},
        )


class TritonModelServer:
    """`ModelServer` on Triton's gRPC API; thread-safe (tritonclient's unary calls are)."""

    def __init__(self, address: str, timeout_s: float = 2.0, *, client: Any = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # `client` lets unit tests substitute a fake with tritonclient's interface.
        self._client = client if client is not None else triton_grpc.InferenceServerClient(address)

    def __repr__(self) -> str:
        return f"TritonModelServer({self.address!r})"

    def __str__(self) -> str:
        return f"Triton at {self.address}"

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        version: str = "",
        parameters: Mapping[str, int | str | bool] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """`ModelServer.infer`, plus Triton request `parameters` (read by the model, e.g. a
        truncation limit) and a `timeout_s` for this call instead of the instance's."""
        request_inputs = [_infer_input(model, name, array) for name, array in inputs.items()]
        requested = [triton_grpc.InferRequestedOutput(name) for name in outputs]
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            result = self._client.infer(
                model,
                request_inputs,
                model_version=version,
                outputs=requested,
                client_timeout=timeout,
                parameters=dict(parameters) if parameters else None,
            )
        except (InferenceServerException, grpc.RpcError) as exc:
            raise self._translate(exc, model, version, timeout) from None
        arrays = {name: result.as_numpy(name) for name in outputs}
        missing = [name for name, array in arrays.items() if array is None]
        if missing:
            raise DomainError(
                f"{self}: model '{model}' answered without outputs {missing}",
                reason="MODEL_OUTPUT_MISSING",
            )
        return arrays

    def is_ready(self, model: str | None = None) -> bool:
        try:
            if model is None:
                return bool(self._client.is_server_ready(client_timeout=self.timeout_s))
            return bool(self._client.is_model_ready(model, client_timeout=self.timeout_s))
        except (InferenceServerException, grpc.RpcError):
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _translate(
        self,
        exc: InferenceServerException | grpc.RpcError,
        model: str,
        version: str,
        timeout_s: float,
    ) -> DomainError:
        status, message = status_and_message(exc)
        target = f"model '{model}'" + (f" version {version}" if version else "")
        if status == "NOT_FOUND" and "no available versions" in message:
            return Unavailable(
                f"{self}: {target} is in the repository but not loaded or not ready: load it "
                "(`--load-model`) and check the server log",
                reason="MODEL_NOT_READY",
                metadata={"model": model},
            )
        if status == "NOT_FOUND":
            return NotFound(
                f"{self} has no {target}: check the name and version against the model "
                f"repository ({message})",
                reason="MODEL_NOT_FOUND",
                metadata={"model": model, "version": version},
            )
        if status == "INVALID_ARGUMENT":
            return InvalidArgument(
                _field_of(message),
                f"{target} rejected the request: {message}",
                reason="INVALID_MODEL_INPUT",
            )
        if status == "UNAVAILABLE":
            return Unavailable(
                f"{self} is unavailable ({message}): {START_HINT}",
                reason="MODEL_SERVER_UNAVAILABLE",
            )
        if status == "DEADLINE_EXCEEDED":
            return DeadlineExceeded(
                f"{self} did not answer {target} within {timeout_s:g}s: the server is "
                "overloaded or the request too large; retry, or raise the client timeout",
                reason="MODEL_SERVER_TIMEOUT",
            )
        if status == "RESOURCE_EXHAUSTED":
            return ResourceExhausted(f"{self}: {target}: {message}", reason="MODEL_SERVER_BUSY")
        return DomainError(
            f"{self} failed {target} with {status}: {message}", reason="MODEL_SERVER_ERROR"
        )


def _infer_input(model: str, name: str, array: np.ndarray) -> triton_grpc.InferInput:
    array = np.asarray(array)
    datatype = np_to_triton_dtype(array.dtype)
    if datatype is None:
        raise InvalidArgument(
            f"inputs.{name}",
            f"dtype {array.dtype} cannot be sent to model '{model}'; use a numeric, bool or "
            "bytes array",
            reason="INVALID_MODEL_INPUT",
        )
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


def status_and_message(exc: InferenceServerException | grpc.RpcError) -> tuple[str, str]:
    """A tritonclient or gRPC error's status name (e.g. `UNAVAILABLE`) and its clean message."""
    if isinstance(exc, InferenceServerException):
        status, message = exc.status() or "UNKNOWN", exc.message() or ""
    else:
        code = exc.code() if hasattr(exc, "code") else None
        status = code.name if code is not None else "UNKNOWN"
        message = exc.details() if hasattr(exc, "details") else str(exc)
    # tritonclient reports the status as str(grpc.StatusCode.X), i.e. "StatusCode.X".
    status = status.removeprefix("StatusCode.")
    message = _NOTE_SUFFIX.sub("", _REQUEST_ID_PREFIX.sub("", message or "")).strip()
    return status, message


def _field_of(message: str) -> str:
    match = _TENSOR_IN_MESSAGE.search(message)
    if match is None:
        return "inputs"
    kind, name = match.groups()
    return f"{kind}s.{name}"
