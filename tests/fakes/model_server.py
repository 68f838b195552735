"""`ModelServer` in process: named models with declared tensors, checked the way Triton checks
a request against a model's config (names, dtypes, per-row dims, versions)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.errors import InvalidArgument, NotFound

Outputs = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class FakeModel:
    """Inputs by name: (dtype, dims of one row); outputs by name: a function of the inputs."""

    inputs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]
    outputs: Mapping[str, Outputs]
    versions: tuple[str, ...] = ("1",)


def ranker(weights: Sequence[float]) -> FakeModel:
    """The signature of the repository's `ranker` (features FP32 [n] → probs_ctr FP32 [1]) with
    the given weights: a logistic model."""
    w = np.asarray(weights, dtype=np.float32)

    def probs(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        logits = inputs["features"] @ w
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).reshape(-1, 1)

    return FakeModel({"features": (np.dtype(np.float32), (len(w),))}, {"probs_ctr": probs})


@dataclass
class InMemoryModelServer:
    models: dict[str, FakeModel] = field(default_factory=dict)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        spec = self.models.get(model)
        if spec is None or (version and version not in spec.versions):
            target = f"model '{model}'" + (f" version {version}" if version else "")
            raise NotFound(f"{self} has no {target}", reason="MODEL_NOT_FOUND")
        arrays = {name: np.asarray(array) for name, array in inputs.items()}
        _check_inputs(model, spec, arrays)
        unknown = [name for name in outputs if name not in spec.outputs]
        if unknown:
            raise InvalidArgument(
                f"outputs.{unknown[0]}",
                f"model '{model}' has no output '{unknown[0]}'",
                reason="INVALID_MODEL_INPUT",
            )
        return {name: spec.outputs[name](arrays) for name in outputs}

    def is_ready(self, model: str | None = None) -> bool:
        return model is None or model in self.models

    def __str__(self) -> str:
        return "the in-memory model server"


def _check_inputs(model: str, spec: FakeModel, arrays: Mapping[str, np.ndarray]) -> None:
    for name in arrays:
        if name not in spec.inputs:
            raise InvalidArgument(
                f"inputs.{name}",
                f"model '{model}' has no input '{name}'",
                reason="INVALID_MODEL_INPUT",
            )
    rows = {array.shape[0] for array in arrays.values() if array.ndim}
    for name, (dtype, dims) in spec.inputs.items():
        array = arrays.get(name)
        if array is None:
            raise InvalidArgument(
                f"inputs.{name}",
                f"model '{model}' expects input '{name}'",
                reason="INVALID_MODEL_INPUT",
            )
        if array.dtype != dtype or tuple(array.shape[1:]) != dims or len(rows) > 1:
            raise InvalidArgument(
                f"inputs.{name}",
                f"model '{model}' expects input '{name}' as {dtype}[n, {dims}], got "
                f"{array.dtype}{list(array.shape)}",
                reason="INVALID_MODEL_INPUT",
            )
