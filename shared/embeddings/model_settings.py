"""The call settings of one embedding model, read from the registry's `EmbeddingModel`."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any

from recstack.registry.v1 import embedding_model_pb2

from shared.errors import FailedPrecondition

_PB = embedding_model_pb2.EmbeddingModel

# The registry's documented defaults (protos/recstack/registry/v1/embedding_model.proto).
DEFAULT_DIMENSION = 1024
DEFAULT_MAX_INPUT_TOKENS = 8192
DEFAULT_BATCH_SIZE = 10
DEFAULT_CONCURRENCY = 30
DEFAULT_MAX_RETRIES = 5
DEFAULT_INITIAL_BACKOFF_S = 0.5
DEFAULT_CALL_TIMEOUT_S = 30.0
# Bumped when the cache key's recipe changes, so old keys can never match new vectors.
_CACHE_KEY_VERSION = "v1"


class Provider(enum.Enum):
    TRITON = "triton"
    OPENAI_COMPATIBLE = "openai_compatible"


_FROM_PROTO = {
    _PB.PROVIDER_TRITON: Provider.TRITON,
    _PB.PROVIDER_OPENAI_COMPATIBLE: Provider.OPENAI_COMPATIBLE,
}


@dataclass(frozen=True)
class ModelSettings:
    """What the embedder needs to call a model; `name` is the registry resource name."""

    name: str
    provider: Provider
    model_name: str
    dimension: int
    max_input_tokens: int
    batch_size: int
    concurrency: int
    endpoint: str
    # A credential declared to the services, sent as the API key; empty sends none.
    credential: str
    max_retries: int
    initial_backoff_s: float
    call_timeout_s: float

    def __post_init__(self) -> None:
        for field in ("dimension", "max_input_tokens", "batch_size", "concurrency"):
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name}: {field} must be at least 1")
        if self.max_retries < 0:
            raise ValueError(f"{self.name}: max_retries must not be negative")
        if self.initial_backoff_s < 0 or self.call_timeout_s <= 0:
            raise ValueError(f"{self.name}: initial_backoff_s >= 0 and call_timeout_s > 0")

    @classmethod
    def from_proto(cls, message: Any) -> ModelSettings:
        """Settings of a registry `EmbeddingModel`; zero or unset fields take the defaults the
        proto documents (the registry applies them too, so stored models have them already)."""
        provider = _FROM_PROTO.get(message.provider)
        if provider is None:
            raise FailedPrecondition(
                f"embedding model {message.name} has no provider: set PROVIDER_TRITON or "
                "PROVIDER_OPENAI_COMPATIBLE in the registry",
                reason="EMBEDDING_MODEL_INVALID",
                metadata={"model": message.name},
            )
        if getattr(message, "api_key_env", ""):
            raise FailedPrecondition(
                f"embedding model {message.name} names an API key environment variable, which "
                "recstack no longer reads: update the model to reference a declared credential",
                reason="API_KEY_ENV_UNSUPPORTED",
                metadata={"model": message.name},
            )
        if not message.model_name:
            raise FailedPrecondition(
                f"embedding model {message.name} has no model_name: set the model's name at "
                "its provider in the registry",
                reason="EMBEDDING_MODEL_INVALID",
                metadata={"model": message.name},
            )
        return cls(
            name=message.name,
            provider=provider,
            model_name=message.model_name,
            dimension=message.dimension or DEFAULT_DIMENSION,
            max_input_tokens=message.max_input_tokens or DEFAULT_MAX_INPUT_TOKENS,
            batch_size=message.batch_size or DEFAULT_BATCH_SIZE,
            concurrency=message.concurrency or DEFAULT_CONCURRENCY,
            endpoint=message.endpoint,
            credential=message.credential,
            max_retries=(
                message.max_retries if message.HasField("max_retries") else DEFAULT_MAX_RETRIES
            ),
            initial_backoff_s=(
                message.initial_backoff.ToTimedelta().total_seconds() or DEFAULT_INITIAL_BACKOFF_S
            ),
            call_timeout_s=(
                message.call_timeout.ToTimedelta().total_seconds() or DEFAULT_CALL_TIMEOUT_S
            ),
        )

    @property
    def project(self) -> str:
        """The project of the model's resource name (`projects/{project}/embeddingModels/…`)."""
        parts = self.name.split("/")
        return parts[1] if len(parts) > 1 and parts[0] == "projects" else ""

    @property
    def cache_key(self) -> str:
        """Stable id of everything that changes a vector (not batching, retries or keys).

        The model name leads so the cache table stays readable; a digest of the rest keeps the
        key short in a table with one row per text.
        """
        endpoint = normalize_endpoint(self.provider, self.endpoint)
        recipe = "\x1f".join(
            [
                _CACHE_KEY_VERSION,
                self.provider.value,
                self.model_name,
                endpoint,
                str(self.dimension),
                str(self.max_input_tokens),
            ]
        )
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:32]
        return f"{self.model_name[:64]}:{digest}"


def normalize_endpoint(provider: Provider, endpoint: str) -> str:
    """One spelling per endpoint: `http://h:1/v1/` and `http://h:1` are the same API."""
    endpoint = endpoint.strip()
    if provider is Provider.TRITON:
        return endpoint.removeprefix("grpc://")
    endpoint = endpoint.rstrip("/")
    return endpoint.removesuffix("/v1") if endpoint else ""
