"""Prometheus metrics of embedding calls, labelled by the model's registry resource name.

The default instance registers on the default registry once, at import: a registry refuses
duplicates, and a process (or a test session) creates many Embedders.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

LABELS = ("model",)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class ModelSeries:
    """One model's label children, looked up once."""

    model_calls: Counter
    texts: Counter
    cache_hits: Counter
    truncations: Counter
    retries: Counter
    call_errors: Counter
    call_seconds: Histogram


class EmbeddingMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, LABELS, registry=registry)

        self._model_calls = counter(
            "recstack_embedding_model_calls", "Provider calls that returned vectors."
        )
        self._texts = counter("recstack_embedding_texts", "Non-null texts asked to be embedded.")
        self._cache_hits = counter(
            "recstack_embedding_cache_hits", "Texts whose vector came from the cache."
        )
        self._truncations = counter(
            "recstack_embedding_truncations", "Texts the model cut at its max input tokens."
        )
        self._retries = counter(
            "recstack_embedding_retries", "Provider calls repeated after a retryable failure."
        )
        self._call_errors = counter(
            "recstack_embedding_call_errors", "Provider calls that failed, retried or not."
        )
        self._call_seconds = Histogram(
            "recstack_embedding_call_seconds",
            "Duration of each provider call, failed ones included.",
            LABELS,
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._series: dict[str, ModelSeries] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> ModelSeries:
        series = self._series.get(name)
        if series is None:
            with self._lock:
                series = self._series.get(name)
                if series is None:
                    series = self._series[name] = ModelSeries(
                        model_calls=self._model_calls.labels(name),
                        texts=self._texts.labels(name),
                        cache_hits=self._cache_hits.labels(name),
                        truncations=self._truncations.labels(name),
                        retries=self._retries.labels(name),
                        call_errors=self._call_errors.labels(name),
                        call_seconds=self._call_seconds.labels(name),
                    )
        return series


DEFAULT_METRICS = EmbeddingMetrics()
