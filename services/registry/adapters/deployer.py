"""What the registry needs from a model server to deploy model versions: load, check, unload.

Implementations translate their vendor's errors into `shared.errors`: an unreachable server
is `Unavailable`, a model the server cannot load is `ModelLoadFailed` carrying its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.errors import FailedPrecondition


class ModelLoadFailed(FailedPrecondition):
    """The server is up but cannot load the model (missing files, a bad ONNX file, a bad
    config); the message is the server's reason."""

    default_reason = "MODEL_LOAD_FAILED"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        # The server's own words, for a version's state message.
        self.detail = detail or message


@dataclass(frozen=True)
class Tensor:
    name: str
    # Triton's spelling, e.g. TYPE_FP32.
    data_type: str
    # Without the batch dimension; -1 is variable.
    dims: tuple[int, ...]


@dataclass(frozen=True)
class DeployedModel:
    """What the server loaded for a model, as its configuration declares it."""

    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


class ModelDeployer(Protocol):
    def load(self, model: str) -> None:
        """Load `model` from the server's repository and return once the load finished.

        Raises ModelLoadFailed, Unavailable or DeadlineExceeded."""
        ...

    def unload(self, model: str) -> None:
        """Unload `model` (requests in flight finish first). Raises Unavailable."""
        ...

    def is_ready(self, model: str, version: str) -> bool:
        """Whether that version of `model` serves now. Raises Unavailable."""
        ...

    def deployed(self, model: str) -> DeployedModel:
        """The loaded model's tensors. Raises ModelLoadFailed (not loaded) or Unavailable."""
        ...
