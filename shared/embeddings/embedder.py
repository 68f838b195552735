"""Text → vectors with a registered embedding model, paying for each distinct text once.

`Embedder.embed` normalises the texts, looks all of them up in the cache in one round trip,
sends the distinct misses to the model's provider in batches of `batch_size` on that model's
thread pool (`concurrency` workers, shared by every caller in the process), retries retryable
failures with capped exponential backoff and full jitter, checks every vector's dimension, and
writes each batch to the cache as soon as it returns: a job that dies midway keeps what it
paid for, and its retry embeds only what is missing.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import structlog

from shared.credentials import Credentials, endpoint_within
from shared.embeddings.cache import EmbeddingCache
from shared.embeddings.metrics import DEFAULT_METRICS, EmbeddingMetrics, ModelSeries
from shared.embeddings.model_settings import ModelSettings, Provider
from shared.embeddings.providers import (
    EmbeddingProvider,
    OpenAICompatibleProvider,
    ProviderReply,
    RetryableError,
    TritonProvider,
    bad_response,
    wrong_dimension,
)
from shared.embeddings.text import normalize, text_hash
from shared.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    quoted,
)
from shared.request_context import seconds_remaining

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 30.0
# A provider's Retry-After is a lower bound on the wait, up to this (a sane ceiling).
MAX_RETRY_AFTER_S = 600.0


@dataclass
class EmbeddingStats:
    """Counts of one `embed` call; `add` accumulates them over a job."""

    texts: int = 0  # non-null texts asked for
    cache_hits: int = 0  # of those, served from the cache
    model_calls: int = 0  # provider calls that returned vectors
    retries: int = 0  # provider calls repeated after a retryable failure
    embedded: int = 0  # distinct texts sent to the model
    truncations: int = 0  # texts the model cut at max_input_tokens
    model_seconds: float = 0.0  # time in provider calls, failed ones included

    def add(self, other: EmbeddingStats) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 (n, dimension); zero rows where the text was None
    valid: np.ndarray  # bool (n,): False where the text was None
    stats: EmbeddingStats


class TextEmbedder(Protocol):
    """What materialization and serving need of an `Embedder` (tests pass fakes)."""

    def embed(self, model: ModelSettings, texts: Sequence[str | None]) -> Embeddings: ...


class _Skipped(Exception):
    """A batch not started because another batch of its call failed."""


@dataclass(frozen=True)
class _Batch:
    hashes: list[bytes]
    texts: list[str]


@dataclass(frozen=True)
class _BatchResult:
    hashes: list[bytes]
    vectors: np.ndarray
    stats: EmbeddingStats


class Embedder:
    """Thread-safe; one per process, so each model's concurrency limit is process-wide.

    `triton_address` serves TRITON models whose endpoint is empty. `sleep` and `jitter`
    (uniform in [0, 1)) are injectable for tests; so are `providers`, by provider kind.
    `close` closes the cache too (when it has a `close`): the embedder owns it.
    """

    def __init__(
        self,
        cache: EmbeddingCache,
        *,
        triton_address: str,
        metrics: EmbeddingMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        providers: Mapping[Provider, EmbeddingProvider] | None = None,
        credentials: Credentials | None = None,
        allowed_endpoints: Sequence[str] = (),
    ) -> None:
        self._cache = cache
        self._allowed_endpoints = tuple(allowed_endpoints)
        self._metrics = metrics or DEFAULT_METRICS
        self._sleep = sleep
        self._jitter = jitter
        self._providers: dict[Provider, EmbeddingProvider] = {
            Provider.TRITON: TritonProvider(triton_address),
            Provider.OPENAI_COMPATIBLE: OpenAICompatibleProvider(credentials=credentials),
            **(providers or {}),
        }
        self._pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}
        self._retired: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()
        self._closed = False

    def embed(self, model: ModelSettings, texts: Sequence[str | None]) -> Embeddings:
        """Vectors of `texts` in order. Raises Unavailable (provider down after retries),
        FailedPrecondition (the model or its settings are wrong), DeadlineExceeded (the
        request's deadline passed) or InvalidArgument (a text is neither str nor None)."""
        self._check_endpoint(model)
        count = len(texts)
        valid = np.zeros(count, dtype=bool)
        unique: dict[bytes, str] = {}  # insertion order: first appearance
        row_hashes: list[bytes] = []
        for row, text in enumerate(texts):
            if text is None:
                continue
            row_hashes.append(self._hash(row, text, unique))
            valid[row] = True
        stats = EmbeddingStats(texts=len(row_hashes))
        series = self._metrics.model(model.name)
        vectors = np.zeros((count, model.dimension), dtype=np.float32)
        if not unique:
            return Embeddings(vectors, valid, stats)
        series.texts.inc(stats.texts)

        found = self._cached(model, list(unique))
        stats.cache_hits = sum(1 for text_hash in row_hashes if text_hash in found)
        series.cache_hits.inc(stats.cache_hits)
        misses = [text_hash for text_hash in unique if text_hash not in found]
        if misses:
            for result in self._embed_misses(model, [(h, unique[h]) for h in misses]):
                found.update(zip(result.hashes, result.vectors, strict=True))
                stats.add(result.stats)
        series.truncations.inc(stats.truncations)

        distinct = list(unique)
        position = {text_hash: index for index, text_hash in enumerate(distinct)}
        table = np.stack([found[text_hash] for text_hash in distinct]).astype(np.float32)
        vectors[valid] = table[[position[text_hash] for text_hash in row_hashes]]
        return Embeddings(vectors, valid, stats)

    def close(self) -> None:
        """Finish calls in flight, drop queued ones, close provider connections and the
        cache."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = [pool for _, pool in self._pools.values()] + self._retired
            self._pools, self._retired = {}, []
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        for provider in self._providers.values():
            provider.close()
        close_cache = getattr(self._cache, "close", None)
        if callable(close_cache):
            close_cache()

    # --- steps of embed ------------------------------------------------------------------

    def _check_endpoint(self, model: ModelSettings) -> None:
        """The operator's allow-list of embedding endpoints, at call time (the registry checked
        it at create time, possibly under another list)."""
        if not self._allowed_endpoints or not model.endpoint:
            return
        url = model.endpoint
        if model.provider is Provider.TRITON and "://" not in url:
            url = f"grpc://{url}"
        try:
            allowed = endpoint_within(url, self._allowed_endpoints, "endpoint")
        except InvalidArgument:
            allowed = False
        if not allowed:
            raise FailedPrecondition(
                f"embedding model {model.name}: endpoint {quoted(model.endpoint)} is not among "
                "the embedding endpoints this service allows; nothing was sent",
                reason="EMBEDDING_ENDPOINT_NOT_ALLOWED",
                metadata={"model": model.name},
            )

    @staticmethod
    def _hash(row: int, text: object, unique: dict[bytes, str]) -> bytes:
        if not isinstance(text, str):
            raise InvalidArgument(
                f"texts[{row}]", f"must be a string or None, not {type(text).__name__}"
            )
        normalized = normalize(text)
        try:
            key = text_hash(normalized)
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"texts[{row}]", "is not valid Unicode (it holds a lone surrogate)"
            ) from None
        unique.setdefault(key, normalized)
        return key

    def _cached(self, model: ModelSettings, hashes: list[bytes]) -> dict[bytes, np.ndarray]:
        cached = self._cache.get(model.cache_key, hashes)
        usable = {h: v for h, v in cached.items() if np.shape(v) == (model.dimension,)}
        if len(usable) < len(cached):
            log.warning(
                "cached embeddings of the wrong length ignored",
                model=model.name,
                count=len(cached) - len(usable),
            )
        return usable

    def _embed_misses(
        self, model: ModelSettings, misses: list[tuple[bytes, str]]
    ) -> list[_BatchResult]:
        provider = self._providers[model.provider]
        remaining = seconds_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        size = model.batch_size
        batches = [
            _Batch([h for h, _ in misses[i : i + size]], [t for _, t in misses[i : i + size]])
            for i in range(0, len(misses), size)
        ]
        futures: list[Future[_BatchResult]] = []
        # Set by the first batch that fails: the call is lost, so batches not yet started
        # are not paid for (those in flight finish and are cached).
        failed = threading.Event()
        # Submitting under the lock: a pool replaced meanwhile (new concurrency) is never
        # handed work after its shutdown.
        with self._lock:
            pool = self._pool(model)
            for batch in batches:
                # A context copy per task (one context cannot be entered by two threads), so
                # log lines from workers carry the caller's request id.
                context = contextvars.copy_context()
                futures.append(
                    pool.submit(
                        context.run, self._run_batch, model, provider, batch, deadline, failed
                    )
                )
        results = []
        try:
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except _Skipped:
                    continue  # the batch that failed raises its own error
        except BaseException:
            failed.set()
            for future in futures:
                future.cancel()
            raise
        return results

    def _pool(self, model: ModelSettings) -> ThreadPoolExecutor:
        if self._closed:
            raise RuntimeError("this Embedder is closed")
        entry = self._pools.get(model.name)
        if entry is not None and entry[0] == model.concurrency:
            return entry[1]
        if entry is not None:
            # The model's concurrency changed in the registry: queued work drains on the old
            # pool while new work goes to the new one.
            entry[1].shutdown(wait=False)
            self._retired.append(entry[1])
        pool = ThreadPoolExecutor(model.concurrency, thread_name_prefix="embedding")
        self._pools[model.name] = (model.concurrency, pool)
        return pool

    def _run_batch(
        self,
        model: ModelSettings,
        provider: EmbeddingProvider,
        batch: _Batch,
        deadline: float | None,
        failed: threading.Event,
    ) -> _BatchResult:
        if failed.is_set():
            raise _Skipped
        series = self._metrics.model(model.name)
        stats = EmbeddingStats()
        try:
            reply = self._call(model, provider, batch.texts, deadline, series, stats)
            vectors = self._checked(model, provider, reply, len(batch.texts))
        except BaseException:
            failed.set()
            raise
        stats.embedded = len(batch.texts)
        stats.truncations = reply.truncated
        try:
            self._cache.put(model.cache_key, dict(zip(batch.hashes, vectors, strict=True)))
        except Exception as exc:
            # The vectors are paid for: the caller still gets them; only reuse is lost.
            log.warning(
                "embedding cache write failed",
                model=model.name,
                texts=len(batch.texts),
                error=str(exc),
                error_type=type(exc).__name__,
            )
        return _BatchResult(batch.hashes, vectors, stats)

    def _call(
        self,
        model: ModelSettings,
        provider: EmbeddingProvider,
        texts: list[str],
        deadline: float | None,
        series: ModelSeries,
        stats: EmbeddingStats,
    ) -> ProviderReply:
        """One batch through the provider, retried on retryable failures."""
        attempts = 0
        last: RetryableError | None = None
        while True:
            timeout = model.call_timeout_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._deadline_passed(model, provider, attempts, last)
                timeout = min(timeout, left)
            attempts += 1
            started = time.perf_counter()
            try:
                reply = provider.embed(model, texts, timeout)
            except RetryableError as exc:
                self._count_failure(series, stats, started)
                last = exc
                if attempts > model.max_retries:
                    raise self._exhausted(model, provider, attempts, exc) from None
                wait = self._backoff(model, attempts - 1, exc.retry_after_s)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise self._deadline_passed(model, provider, attempts, exc) from None
                log.warning(
                    "embedding call failed, retrying",
                    model=model.name,
                    provider=provider.describe(model),
                    attempt=attempts,
                    max_retries=model.max_retries,
                    wait_s=round(wait, 3),
                    error=exc.message,
                )
                stats.retries += 1
                series.retries.inc()
                self._sleep(wait)
                continue
            except DomainError as exc:
                self._count_failure(series, stats, started)
                # Only the reason: provider messages may quote the texts.
                log.warning(
                    "embedding call failed",
                    model=model.name,
                    provider=provider.describe(model),
                    reason=exc.reason,
                )
                raise
            elapsed = time.perf_counter() - started
            stats.model_seconds += elapsed
            stats.model_calls += 1
            series.call_seconds.observe(elapsed)
            series.model_calls.inc()
            return reply

    def _backoff(self, model: ModelSettings, retry: int, retry_after_s: float | None) -> float:
        """Full jitter on a capped exponential (AWS Architecture Blog, "Exponential Backoff
        and Jitter"); a provider's Retry-After is a floor."""
        wait = self._jitter() * min(model.initial_backoff_s * 2**retry, MAX_BACKOFF_S)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, MAX_RETRY_AFTER_S))
        return wait

    @staticmethod
    def _count_failure(series: ModelSeries, stats: EmbeddingStats, started: float) -> None:
        elapsed = time.perf_counter() - started
        stats.model_seconds += elapsed
        series.call_seconds.observe(elapsed)
        series.call_errors.inc()

    @staticmethod
    def _checked(
        model: ModelSettings, provider: EmbeddingProvider, reply: ProviderReply, count: int
    ) -> np.ndarray:
        vectors = np.asarray(reply.vectors, dtype=np.float32)
        where = provider.describe(model)
        if vectors.ndim != 2 or vectors.shape[0] != count:
            raise bad_response(model, where, f"an array of shape {vectors.shape} for {count} texts")
        if vectors.shape[1] != model.dimension:
            raise wrong_dimension(model, vectors.shape[1])
        if not np.isfinite(vectors).all():
            raise bad_response(model, where, "vectors holding NaN or infinity")
        return vectors

    @staticmethod
    def _exhausted(
        model: ModelSettings, provider: EmbeddingProvider, attempts: int, last: RetryableError
    ) -> Unavailable:
        return Unavailable(
            f"embedding model {model.name} (model '{model.model_name}' on "
            f"{provider.describe(model)}) failed {attempts} attempt(s); last error: "
            f"{last.message}. Check that the provider is up and reachable; "
            f"the model's max_retries ({model.max_retries}) and call_timeout "
            f"({model.call_timeout_s:g}s) bound how long calls are retried",
            reason="EMBEDDING_PROVIDER_UNAVAILABLE",
            metadata={"model": model.name, "attempts": str(attempts)},
        )

    @staticmethod
    def _deadline_passed(
        model: ModelSettings,
        provider: EmbeddingProvider,
        attempts: int,
        last: RetryableError | None,
    ) -> DeadlineExceeded:
        detail = f"; last error: {last.message}" if last else ""
        return DeadlineExceeded(
            f"the request's deadline left no time to embed with {model.name} (model "
            f"'{model.model_name}' on {provider.describe(model)}) after {attempts} "
            f"attempt(s){detail}",
            reason="EMBEDDING_DEADLINE_EXCEEDED",
            metadata={"model": model.name, "attempts": str(attempts)},
        )
