"""The TRITON provider against the real tritonserver and the repository's `minilm` model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY
from shared.embeddings import (
    Embedder,
    EmbeddingMetrics,
    InMemoryEmbeddingCache,
    ModelSettings,
    Provider,
)
from shared.errors import FailedPrecondition

MINILM_ONNX = DEFAULT_MODEL_REPOSITORY / "minilm" / "1" / "model.onnx"

pytestmark = pytest.mark.skipif(
    not MINILM_ONNX.is_file(),
    reason=f"the text-embedding model is not built: {MINILM_ONNX} is missing "
    "(export it with infra/triton/export_text_embedding.py, or `make models`)",
)

LONG_REVIEW = " ".join(["the dress fits well but the fabric is thin and pills"] * 12)


@pytest.fixture
def embedder(triton_server) -> Iterator[Embedder]:
    instance = Embedder(
        InMemoryEmbeddingCache(),
        triton_address=triton_server.grpc_address,
        metrics=EmbeddingMetrics(CollectorRegistry()),
    )
    try:
        yield instance
    finally:
        instance.close()


def minilm(**overrides) -> ModelSettings:
    values = {
        "name": "projects/shop/embeddingModels/minilm",
        "provider": Provider.TRITON,
        "model_name": "minilm",
        "dimension": 384,
        "max_input_tokens": 256,
        "batch_size": 8,
        "concurrency": 2,
        "endpoint": "",
        "credential": "",
        "max_retries": 2,
        "initial_backoff_s": 0.05,
        "call_timeout_s": 30.0,
    }
    values.update(overrides)
    return ModelSettings(**values)


def test_minilm_embeds_normalised_vectors_that_mean_something(embedder):
    texts = [
        "This dress runs small, order a size up.",
        "  This dress  runs small,\norder a size up. ",
        "The dress is too tight; buy the next size.",
        "Shipping to Norway took three weeks.",
        None,
    ]

    result = embedder.embed(minilm(), texts)

    assert result.vectors.shape == (5, 384)
    assert result.valid.tolist() == [True, True, True, True, False]
    norms = np.linalg.norm(result.vectors[:4], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    np.testing.assert_array_equal(result.vectors[0], result.vectors[1])
    similar = float(result.vectors[0] @ result.vectors[2])
    unrelated = float(result.vectors[0] @ result.vectors[3])
    assert similar > unrelated + 0.2
    assert result.stats.embedded == 3
    assert result.stats.truncations == 0


def test_max_input_tokens_truncates_in_the_model(embedder):
    short = embedder.embed(minilm(max_input_tokens=16), [LONG_REVIEW, "fits well"])
    full = embedder.embed(minilm(max_input_tokens=256), [LONG_REVIEW])

    assert short.stats.truncations == 1
    assert full.stats.truncations == 0
    assert not np.allclose(short.vectors[0], full.vectors[0])


def test_second_call_is_served_from_the_cache(embedder):
    texts = [f"review number {i}" for i in range(20)]
    first = embedder.embed(minilm(), texts)
    second = embedder.embed(minilm(), texts)
    assert first.stats.model_calls == 3
    assert (second.stats.model_calls, second.stats.cache_hits) == (0, 20)
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_a_declared_dimension_that_differs_is_reported(embedder):
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(minilm(dimension=768), ["a"])
    assert excinfo.value.reason == "WRONG_VECTOR_DIMENSION"
    assert "returned 384-dimensional vectors; it is declared with dimension 768" in str(
        excinfo.value
    )


def test_an_unknown_model_fails_at_once(embedder):
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(minilm(model_name="no_such_model"), ["a"])
    assert excinfo.value.reason == "EMBEDDING_PROVIDER_REJECTED"
    assert "no_such_model" in excinfo.value.message
