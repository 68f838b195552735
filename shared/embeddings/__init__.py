"""Text → vectors behind one interface, for materialization and serving.

    embedder = Embedder(PostgresEmbeddingCache(conninfo), triton_address=settings.triton_addr)
    result = embedder.embed(ModelSettings.from_proto(registry_model), texts)
    result.vectors  # float32 (n, dimension), zero rows where result.valid is False

Models are registry `EmbeddingModel`s ("LLM call information") served by our Triton or by any
OpenAI-compatible API; their call settings (batch size, concurrency, retries, backoff, call
timeout) are honoured, and a content-hash cache in PostgreSQL (schema `embeddings`, created by
`migrate_cache`) makes sure the same text is never paid for twice. Errors are
`shared.errors` domain errors; no client library type reaches callers.
"""

from shared.embeddings.cache import (
    EmbeddingCache,
    InMemoryEmbeddingCache,
    PostgresEmbeddingCache,
    migrate_cache,
)
from shared.embeddings.embedder import Embedder, Embeddings, EmbeddingStats, TextEmbedder
from shared.embeddings.metrics import EmbeddingMetrics
from shared.embeddings.model_settings import ModelSettings, Provider
from shared.embeddings.providers import EmbeddingProvider, ProviderReply, RetryableError
from shared.embeddings.text import normalize, text_hash

__all__ = [
    "Embedder",
    "EmbeddingCache",
    "EmbeddingMetrics",
    "EmbeddingProvider",
    "EmbeddingStats",
    "Embeddings",
    "InMemoryEmbeddingCache",
    "ModelSettings",
    "PostgresEmbeddingCache",
    "Provider",
    "ProviderReply",
    "RetryableError",
    "TextEmbedder",
    "migrate_cache",
    "normalize",
    "text_hash",
]
