"""Embedder: normalisation, cache, batching, concurrency, retries and errors, on fakes."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from recstack.registry.v1 import embedding_model_pb2
from structlog.testing import capture_logs
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from shared.embeddings import (
    Embedder,
    EmbeddingMetrics,
    EmbeddingStats,
    InMemoryEmbeddingCache,
    ModelSettings,
    Provider,
    ProviderReply,
    RetryableError,
    normalize,
    text_hash,
)
from shared.embeddings.providers import TritonProvider
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from shared.model_server import TritonModelServer
from shared.request_context import set_deadline

NAME = "projects/shop/embeddingModels/reviews"
PB = embedding_model_pb2.EmbeddingModel


def settings(**overrides) -> ModelSettings:
    values = {
        "name": NAME,
        "provider": Provider.OPENAI_COMPATIBLE,
        "model_name": "text-embedding-v4",
        "dimension": 4,
        "max_input_tokens": 512,
        "batch_size": 10,
        "concurrency": 4,
        "endpoint": "http://embeddings.test",
        "credential": "",
        "max_retries": 5,
        "initial_backoff_s": 0.5,
        "call_timeout_s": 30.0,
    }
    values.update(overrides)
    return ModelSettings(**values)


def vector_of(text: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)


class FakeProvider:
    """An `EmbeddingProvider` that records calls and in-flight concurrency; `script` holds
    exceptions (or None for success) to play on successive calls before it always succeeds."""

    def __init__(self, *, script=(), delay_s: float = 0.0, dimension: int | None = None) -> None:
        self.script = list(script)
        self.delay_s = delay_s
        self.dimension = dimension
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self._lock = threading.Lock()

    def embed(self, model, texts, timeout_s):
        with self._lock:
            self.calls.append(list(texts))
            self.timeouts.append(timeout_s)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            error = self.script.pop(0) if self.script else None
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if error is not None:
                raise error
            dimension = self.dimension or model.dimension
            return ProviderReply(np.stack([vector_of(t, dimension) for t in texts]), truncated=0)
        finally:
            with self._lock:
                self.in_flight -= 1

    def describe(self, model):
        return "the fake provider at test://fake"

    def close(self):
        self.closed = True

    @property
    def sent(self) -> list[str]:
        return [text for call in self.calls for text in call]


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class CountingCache(InMemoryEmbeddingCache):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[list[bytes]] = []
        self.puts: list[int] = []

    def get(self, model_key, hashes):
        self.gets.append(list(hashes))
        return super().get(model_key, hashes)

    def put(self, model_key, vectors):
        self.puts.append(len(vectors))
        super().put(model_key, vectors)


def make_embedder(provider, *, cache=None, jitter=0.5, registry=None):
    sleep = Recorder()
    embedder = Embedder(
        cache if cache is not None else CountingCache(),
        triton_address="127.0.0.1:1",
        metrics=EmbeddingMetrics(registry or CollectorRegistry()),
        sleep=sleep,
        jitter=lambda: jitter,
        providers={Provider.OPENAI_COMPATIBLE: provider},
    )
    return embedder, sleep


# --- normalisation and hashing -----------------------------------------------------------


def test_normalize_applies_nfc_collapses_whitespace_and_strips():
    decomposed = "  Cafe\u0301\t au\u00a0 \n lait  "
    assert normalize(decomposed) == "Caf\u00e9 au lait"
    assert normalize("\u3000x\u2003y ") == "x y"
    assert normalize("   ") == ""


def test_text_hash_is_sha256_of_the_normalised_utf8():
    normalized = normalize(" Café  au lait ")
    assert text_hash(normalized) == hashlib.sha256("Café au lait".encode()).digest()
    assert len(text_hash(normalized)) == 32
    assert text_hash(normalize("Cafe\u0301 au\nlait")) == text_hash(normalized)
    assert text_hash("a") != text_hash("b")


# --- settings ----------------------------------------------------------------------------


def test_from_proto_fills_documented_defaults():
    message = PB(name=NAME, provider=PB.PROVIDER_TRITON, model_name="minilm")
    model = ModelSettings.from_proto(message)
    assert model == ModelSettings(
        name=NAME,
        provider=Provider.TRITON,
        model_name="minilm",
        dimension=1024,
        max_input_tokens=8192,
        batch_size=10,
        concurrency=30,
        endpoint="",
        credential="",
        max_retries=5,
        initial_backoff_s=0.5,
        call_timeout_s=30.0,
    )


def test_from_proto_keeps_set_values_including_zero_retries():
    message = PB(
        name=NAME,
        provider=PB.PROVIDER_OPENAI_COMPATIBLE,
        model_name="text-embedding-v4",
        dimension=256,
        max_input_tokens=2048,
        batch_size=25,
        concurrency=3,
        endpoint="https://api.example.com/v1",
        credential="dashscope",
        max_retries=0,
    )
    message.initial_backoff.FromTimedelta(timedelta(milliseconds=20))
    message.call_timeout.FromTimedelta(timedelta(seconds=7))
    model = ModelSettings.from_proto(message)
    assert (model.provider, model.dimension, model.max_input_tokens) == (
        Provider.OPENAI_COMPATIBLE,
        256,
        2048,
    )
    assert (model.batch_size, model.concurrency, model.max_retries) == (25, 3, 0)
    assert (model.initial_backoff_s, model.call_timeout_s) == (0.02, 7.0)
    assert (model.endpoint, model.credential, model.project) == (
        "https://api.example.com/v1",
        "dashscope",
        "shop",
    )


def test_from_proto_refuses_a_stored_api_key_env():
    message = PB(name=NAME, provider=PB.PROVIDER_OPENAI_COMPATIBLE, model_name="m")
    message.api_key_env = "RECSTACK_DATABASE_URL"
    with pytest.raises(FailedPrecondition, match="no longer reads") as excinfo:
        ModelSettings.from_proto(message)
    assert excinfo.value.reason == "API_KEY_ENV_UNSUPPORTED"


def test_from_proto_without_provider_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition, match="has no provider") as excinfo:
        ModelSettings.from_proto(PB(name=NAME, model_name="m"))
    assert excinfo.value.reason == "EMBEDDING_MODEL_INVALID"


def test_cache_key_changes_only_with_what_changes_vectors():
    base = settings()
    assert base.cache_key.startswith("text-embedding-v4:")
    assert base.cache_key == settings().cache_key
    same = [
        settings(batch_size=99),
        settings(concurrency=1),
        settings(max_retries=0),
        settings(initial_backoff_s=2.0),
        settings(call_timeout_s=1.0),
        settings(credential="other"),
        settings(name="projects/other/embeddingModels/copy"),
        settings(endpoint="http://embeddings.test/v1/"),
    ]
    assert {model.cache_key for model in same} == {base.cache_key}
    different = [
        settings(provider=Provider.TRITON),
        settings(model_name="text-embedding-v3"),
        settings(endpoint="http://other.test"),
        settings(dimension=8),
        settings(max_input_tokens=128),
    ]
    keys = {model.cache_key for model in different}
    assert len(keys) == len(different)
    assert base.cache_key not in keys


# --- embedding ---------------------------------------------------------------------------


def test_misses_go_in_batches_of_batch_size_with_normalised_text():
    provider = FakeProvider()
    embedder, _ = make_embedder(provider)
    texts = [f"  review   number {i} " for i in range(25)]

    result = embedder.embed(settings(batch_size=10), texts)

    assert sorted(len(call) for call in provider.calls) == [5, 10, 10]
    assert sorted(provider.sent) == sorted(f"review number {i}" for i in range(25))
    assert provider.timeouts == [30.0, 30.0, 30.0]
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (25, 4)
    for row in (0, 13, 24):
        np.testing.assert_array_equal(result.vectors[row], vector_of(f"review number {row}", 4))
    assert result.valid.tolist() == [True] * 25
    assert result.stats == EmbeddingStats(
        texts=25,
        cache_hits=0,
        model_calls=3,
        retries=0,
        embedded=25,
        truncations=0,
        model_seconds=result.stats.model_seconds,
    )
    assert result.stats.model_seconds > 0


def test_duplicates_are_embedded_once_and_fill_every_row():
    provider = FakeProvider()
    embedder, _ = make_embedder(provider)

    result = embedder.embed(settings(), ["good shoes", " good  shoes", "bad", "good shoes\n"])

    assert provider.calls == [["good shoes", "bad"]]
    expected = vector_of("good shoes", 4)
    for row in (0, 1, 3):
        np.testing.assert_array_equal(result.vectors[row], expected)
    np.testing.assert_array_equal(result.vectors[2], vector_of("bad", 4))
    assert (result.stats.texts, result.stats.embedded) == (4, 2)


def test_none_texts_are_invalid_zero_rows():
    provider = FakeProvider()
    cache = CountingCache()
    embedder, _ = make_embedder(provider, cache=cache)

    result = embedder.embed(settings(), [None, "fits well", None])

    assert result.valid.tolist() == [False, True, False]
    assert not result.vectors[[0, 2]].any()
    np.testing.assert_array_equal(result.vectors[1], vector_of("fits well", 4))
    assert result.stats.texts == 1

    nothing = embedder.embed(settings(), [None, None])
    assert nothing.vectors.shape == (2, 4)
    assert not nothing.valid.any()
    assert nothing.stats == EmbeddingStats()
    assert len(provider.calls) == 1
    assert len(cache.gets) == 1
    empty = embedder.embed(settings(), [])
    assert empty.vectors.shape == (0, 4)


def test_cache_hits_skip_the_provider():
    provider = FakeProvider()
    cache = CountingCache()
    embedder, _ = make_embedder(provider, cache=cache)
    texts = [f"text {i}" for i in range(12)]
    first = embedder.embed(settings(batch_size=5), texts)

    again = embedder.embed(settings(batch_size=5), texts)

    assert len(provider.calls) == 3
    assert again.stats.model_calls == 0
    assert again.stats.cache_hits == 12
    assert again.stats.embedded == 0
    np.testing.assert_array_equal(again.vectors, first.vectors)
    # One lookup per call, for all distinct texts.
    assert [len(hashes) for hashes in cache.gets] == [12, 12]


def test_only_misses_are_sent_when_some_texts_are_cached():
    provider = FakeProvider()
    embedder, _ = make_embedder(provider)
    embedder.embed(settings(), ["a", "b"])

    result = embedder.embed(settings(), ["a", "c", "b", "d", "a"])

    assert provider.calls[1] == ["c", "d"]
    assert result.stats.cache_hits == 3
    assert result.stats.embedded == 2


def test_cache_is_per_model_key():
    provider = FakeProvider()
    embedder, _ = make_embedder(provider)
    embedder.embed(settings(), ["a"])
    embedder.embed(settings(max_input_tokens=64), ["a"])
    assert provider.calls == [["a"], ["a"]]


def test_cached_vectors_of_the_wrong_length_are_misses():
    provider = FakeProvider()
    cache = CountingCache()
    model = settings()
    cache.put(model.cache_key, {text_hash("a"): np.ones(3, np.float32)})
    embedder, _ = make_embedder(provider, cache=cache)

    with capture_logs() as logs:
        result = embedder.embed(model, ["a"])

    assert provider.calls == [["a"]]
    np.testing.assert_array_equal(result.vectors[0], vector_of("a", 4))
    assert result.stats.cache_hits == 0
    assert any(line["event"] == "cached embeddings of the wrong length ignored" for line in logs)


def test_each_batch_is_cached_as_it_returns_so_a_rerun_pays_only_the_rest():
    failure = FailedPrecondition(
        "quota exhausted for this month", reason="EMBEDDING_REQUEST_REJECTED"
    )
    provider = FakeProvider(script=[None, None, failure])
    cache = CountingCache()
    embedder, _ = make_embedder(provider, cache=cache)
    model = settings(batch_size=4, concurrency=1)
    texts = [f"t{i}" for i in range(16)]

    with pytest.raises(FailedPrecondition, match="quota exhausted"):
        embedder.embed(model, texts)

    # Concurrency 1: batches ran in order, the fourth was cancelled before it started.
    assert len(provider.calls) == 3
    assert cache.puts == [4, 4]
    healthy = FakeProvider()
    rerun, _ = make_embedder(healthy, cache=cache)
    result = rerun.embed(model, texts)
    assert sorted(healthy.sent) == sorted(f"t{i}" for i in range(8, 16))
    assert (result.stats.cache_hits, result.stats.embedded) == (8, 8)


def test_a_failed_cache_write_still_returns_the_vectors():
    class BrokenWrites(InMemoryEmbeddingCache):
        def put(self, model_key, vectors):
            raise Unavailable("embedding-cache database connection failed: boom")

    provider = FakeProvider()
    embedder, _ = make_embedder(provider, cache=BrokenWrites())
    with capture_logs() as logs:
        result = embedder.embed(settings(), ["x"])
    np.testing.assert_array_equal(result.vectors[0], vector_of("x", 4))
    (line,) = [line for line in logs if line["event"] == "embedding cache write failed"]
    assert line["error_type"] == "Unavailable"


def test_concurrency_never_exceeds_the_setting_across_callers():
    provider = FakeProvider(delay_s=0.02)
    embedder, _ = make_embedder(provider)
    model = settings(batch_size=2, concurrency=3)
    results = {}

    def run(worker: int) -> None:
        texts = [f"w{worker} t{i}" for i in range(20)]
        results[worker] = (texts, embedder.embed(model, texts))

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(provider.calls) == 40
    assert provider.max_in_flight == 3
    for texts, result in results.values():
        for row, text in enumerate(texts):
            np.testing.assert_array_equal(result.vectors[row], vector_of(text, 4))


def test_a_lower_concurrency_setting_takes_effect():
    provider = FakeProvider(delay_s=0.01)
    embedder, _ = make_embedder(provider)
    embedder.embed(settings(batch_size=1, concurrency=4), [f"a{i}" for i in range(8)])
    provider.max_in_flight = 0
    embedder.embed(settings(batch_size=1, concurrency=1), [f"b{i}" for i in range(5)])
    assert provider.max_in_flight == 1


# --- retries -----------------------------------------------------------------------------


def test_retryable_failures_back_off_exponentially_with_full_jitter():
    errors = [RetryableError("HTTP 503: overloaded") for _ in range(3)]
    provider = FakeProvider(script=errors)
    embedder, sleep = make_embedder(provider, jitter=0.5)

    result = embedder.embed(settings(initial_backoff_s=0.5), ["x"])

    # jitter() * initial * 2**attempt
    assert sleep.sleeps == [0.25, 0.5, 1.0]
    assert len(provider.calls) == 4
    assert (result.stats.retries, result.stats.model_calls) == (3, 1)
    np.testing.assert_array_equal(result.vectors[0], vector_of("x", 4))


def test_backoff_is_capped_at_30_seconds():
    provider = FakeProvider(script=[RetryableError("timeout")] * 4)
    embedder, sleep = make_embedder(provider, jitter=1.0)
    embedder.embed(settings(initial_backoff_s=10.0), ["x"])
    assert sleep.sleeps == [10.0, 20.0, 30.0, 30.0]


def test_retry_after_is_a_lower_bound_on_the_wait():
    provider = FakeProvider(
        script=[
            RetryableError("HTTP 429: slow down", retry_after_s=7.0),
            RetryableError("HTTP 429: slow down", retry_after_s=0.01),
        ]
    )
    embedder, sleep = make_embedder(provider, jitter=0.1)
    embedder.embed(settings(initial_backoff_s=1.0), ["x"])
    assert sleep.sleeps == [7.0, pytest.approx(0.2)]


def test_non_retryable_errors_fail_at_once():
    error = FailedPrecondition("rejected: input too long", reason="EMBEDDING_REQUEST_REJECTED")
    provider = FakeProvider(script=[error])
    embedder, sleep = make_embedder(provider)
    with pytest.raises(FailedPrecondition, match="input too long"):
        embedder.embed(settings(), ["x"])
    assert len(provider.calls) == 1
    assert sleep.sleeps == []


def test_exhausted_retries_raise_unavailable_naming_model_provider_and_last_error():
    provider = FakeProvider(script=[RetryableError(f"HTTP 503: attempt {i}") for i in range(10)])
    embedder, sleep = make_embedder(provider)

    with capture_logs() as logs, pytest.raises(Unavailable) as excinfo:
        embedder.embed(settings(max_retries=2), ["secret review text"])

    error = excinfo.value
    assert error.reason == "EMBEDDING_PROVIDER_UNAVAILABLE"
    assert NAME in error.message
    assert "the fake provider at test://fake" in error.message
    assert "3 attempt(s)" in error.message
    assert "last error: HTTP 503: attempt 2" in error.message
    assert error.metadata == {"model": NAME, "attempts": "3"}
    assert len(provider.calls) == 3
    assert len(sleep.sleeps) == 2
    retries = [line for line in logs if line["event"] == "embedding call failed, retrying"]
    assert [line["attempt"] for line in retries] == [1, 2]
    assert "secret review text" not in repr(logs)


def test_zero_max_retries_makes_one_attempt():
    provider = FakeProvider(script=[RetryableError("connection refused")])
    embedder, sleep = make_embedder(provider)
    with pytest.raises(Unavailable, match=r"1 attempt\(s\)"):
        embedder.embed(settings(max_retries=0), ["x"])
    assert sleep.sleeps == []


def test_a_request_deadline_stops_retries_early():
    provider = FakeProvider(script=[RetryableError("HTTP 429", retry_after_s=60.0)])
    embedder, sleep = make_embedder(provider)
    set_deadline(time.monotonic() + 5.0)
    try:
        with pytest.raises(DeadlineExceeded) as excinfo:
            embedder.embed(settings(), ["x"])
    finally:
        set_deadline(None)
    assert excinfo.value.reason == "EMBEDDING_DEADLINE_EXCEEDED"
    assert sleep.sleeps == []
    # The call itself got no more than the time left.
    assert provider.timeouts[0] <= 5.0


# --- checks of replies -------------------------------------------------------------------


def test_wrong_dimension_is_a_failed_precondition_and_nothing_is_cached():
    provider = FakeProvider(dimension=768)
    cache = CountingCache()
    embedder, _ = make_embedder(provider, cache=cache)
    model = settings(dimension=384, name="projects/p/embeddingModels/m")

    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model, ["x"])

    assert excinfo.value.reason == "WRONG_VECTOR_DIMENSION"
    assert excinfo.value.message.startswith(
        "embedding model projects/p/embeddingModels/m returned 768-dimensional vectors; "
        "it is declared with dimension 384"
    )
    assert cache.puts == []


def test_a_reply_with_the_wrong_number_of_rows_is_an_error():
    class Short(FakeProvider):
        def embed(self, model, texts, timeout_s):
            return ProviderReply(np.zeros((len(texts) - 1, model.dimension), np.float32))

    embedder, _ = make_embedder(Short())
    with pytest.raises(Exception, match=r"shape \(1, 4\) for 2 texts") as excinfo:
        embedder.embed(settings(), ["a", "b"])
    assert excinfo.value.reason == "EMBEDDING_PROVIDER_BAD_RESPONSE"


def test_non_finite_vectors_are_refused():
    class NaNs(FakeProvider):
        def embed(self, model, texts, timeout_s):
            return ProviderReply(np.full((len(texts), model.dimension), np.nan, np.float32))

    embedder, _ = make_embedder(NaNs())
    with pytest.raises(Exception, match="NaN"):
        embedder.embed(settings(), ["a"])


def test_a_text_that_is_not_a_string_is_an_invalid_argument():
    embedder, _ = make_embedder(FakeProvider())
    with pytest.raises(InvalidArgument) as excinfo:
        embedder.embed(settings(), ["ok", float("nan")])
    assert excinfo.value.field == "texts[1]"
    assert "not float" in excinfo.value.message


# --- metrics and lifecycle ---------------------------------------------------------------


def test_metrics_count_per_model():
    registry = CollectorRegistry()
    provider = FakeProvider(script=[RetryableError("HTTP 500")])
    embedder, _ = make_embedder(provider, registry=registry)
    embedder.embed(settings(batch_size=2), ["a", "b", "c", None])
    embedder.embed(settings(batch_size=2), ["a", "d"])

    def value(name: str) -> float:
        return registry.get_sample_value(name, {"model": NAME}) or 0.0

    assert value("recstack_embedding_texts_total") == 5
    assert value("recstack_embedding_cache_hits_total") == 1
    assert value("recstack_embedding_model_calls_total") == 3
    assert value("recstack_embedding_retries_total") == 1
    assert value("recstack_embedding_call_errors_total") == 1
    assert value("recstack_embedding_call_seconds_count") == 4
    assert value("recstack_embedding_truncations_total") == 0


def test_default_metrics_are_shared_by_every_embedder():
    first = Embedder(InMemoryEmbeddingCache(), triton_address="127.0.0.1:1")
    second = Embedder(InMemoryEmbeddingCache(), triton_address="127.0.0.1:1")
    first.close()
    second.close()


def test_close_closes_providers_and_cache_and_refuses_new_work():
    class ClosableCache(InMemoryEmbeddingCache):
        closed = False

        def close(self):
            self.closed = True

    provider = FakeProvider()
    cache = ClosableCache()
    embedder, _ = make_embedder(provider, cache=cache)
    embedder.embed(settings(), ["a"])
    embedder.close()
    embedder.close()
    assert provider.closed
    assert cache.closed
    with pytest.raises(RuntimeError, match="closed"):
        embedder.embed(settings(), ["b"])


def test_stats_add_accumulates_every_count():
    total = EmbeddingStats()
    total.add(EmbeddingStats(1, 2, 3, 4, 5, 6, 0.5))
    total.add(EmbeddingStats(10, 20, 30, 40, 50, 60, 1.0))
    assert total == EmbeddingStats(11, 22, 33, 44, 55, 66, 1.5)


# --- the Triton provider, on a fake tritonclient -----------------------------------------


class FakeTritonResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


class FakeTritonClient:
    """tritonclient.grpc.InferenceServerClient's `infer`, embedding each text like minilm."""

    def __init__(self, errors=(), dimension=384):
        self.errors = list(errors)
        self.dimension = dimension
        self.calls = []
        self.closed = False

    def infer(self, model_name, inputs, **kwargs):
        self.calls.append({"model": model_name, "inputs": inputs, **kwargs})
        if self.errors:
            raise self.errors.pop(0)
        (tensor,) = inputs
        texts = [text.decode() for text in self.texts_of(tensor)]
        limit = kwargs["parameters"]["max_input_tokens"]
        embedding = np.stack([vector_of(text, self.dimension) for text in texts])
        truncated = np.array([[len(text.split()) > limit] for text in texts])
        return FakeTritonResult({"embedding": embedding, "truncated": truncated})

    @staticmethod
    def texts_of(tensor):
        return deserialize_bytes_tensor(tensor._get_content()).tolist()

    def close(self):
        self.closed = True


def triton_embedder(client, *, default="triton.default:8001"):
    addresses = []

    def factory(address):
        addresses.append(address)
        return TritonModelServer(address, client=client)

    sleep = Recorder()
    embedder = Embedder(
        InMemoryEmbeddingCache(),
        triton_address=default,
        metrics=EmbeddingMetrics(CollectorRegistry()),
        sleep=sleep,
        jitter=lambda: 0.5,
        providers={Provider.TRITON: TritonProvider(default, server_factory=factory)},
    )
    return embedder, addresses, sleep


def minilm(**overrides):
    values = {
        "provider": Provider.TRITON,
        "model_name": "minilm",
        "dimension": 384,
        "max_input_tokens": 3,
        "endpoint": "",
        "call_timeout_s": 4.5,
    }
    values.update(overrides)
    return settings(**values)


def test_triton_request_carries_text_tensor_truncation_parameter_and_timeout():
    client = FakeTritonClient()
    embedder, addresses, _ = triton_embedder(client)

    result = embedder.embed(minilm(), ["short one", "this review is far too long", None])

    assert addresses == ["triton.default:8001"]
    (call,) = client.calls
    assert call["model"] == "minilm"
    assert call["parameters"] == {"max_input_tokens": 3}
    assert call["client_timeout"] == 4.5
    assert [o.name() for o in call["outputs"]] == ["embedding", "truncated"]
    (tensor,) = call["inputs"]
    assert (tensor.name(), tensor.datatype(), tensor.shape()) == ("text", "BYTES", [2, 1])
    assert FakeTritonClient.texts_of(tensor) == [b"short one", b"this review is far too long"]
    assert result.stats.truncations == 1
    np.testing.assert_array_equal(result.vectors[1], vector_of("this review is far too long", 384))
    assert result.valid.tolist() == [True, True, False]


def test_triton_endpoint_overrides_the_platform_address():
    client = FakeTritonClient()
    embedder, addresses, _ = triton_embedder(client)
    embedder.embed(minilm(endpoint="grpc://gpu-triton:8001"), ["a"])
    embedder.embed(minilm(endpoint="gpu-triton:8001"), ["b"])
    assert addresses == ["gpu-triton:8001"]


def test_triton_unavailable_is_retried():
    unavailable = InferenceServerException(
        msg="connection refused", status="StatusCode.UNAVAILABLE"
    )
    client = FakeTritonClient(errors=[unavailable, unavailable])
    embedder, _, sleep = triton_embedder(client)
    result = embedder.embed(minilm(), ["a"])
    assert result.stats.retries == 2
    assert sleep.sleeps == [0.25, 0.5]


def test_triton_deadline_and_busy_are_retried_until_exhausted():
    class Rpc(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "queue full"

    deadline = InferenceServerException(
        msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"
    )
    client = FakeTritonClient(errors=[deadline, Rpc()])
    embedder, _, _ = triton_embedder(client)
    with pytest.raises(Unavailable) as excinfo:
        embedder.embed(minilm(max_retries=1), ["a"])
    assert "Triton at triton.default:8001" in excinfo.value.message
    assert "queue full" in excinfo.value.message
    assert "2 attempt(s)" in excinfo.value.message


def test_unknown_triton_model_fails_at_once_as_failed_precondition():
    missing = InferenceServerException(
        msg="Request for unknown model: 'minilm' is not found", status="StatusCode.NOT_FOUND"
    )
    client = FakeTritonClient(errors=[missing])
    embedder, _, sleep = triton_embedder(client)
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(minilm(), ["a"])
    assert excinfo.value.reason == "EMBEDDING_PROVIDER_REJECTED"
    assert NAME in excinfo.value.message
    assert "minilm" in excinfo.value.message
    assert sleep.sleeps == []
    assert len(client.calls) == 1


def test_triton_wrong_dimension_is_reported():
    embedder, _, _ = triton_embedder(FakeTritonClient(dimension=768))
    with pytest.raises(FailedPrecondition, match="returned 768-dimensional vectors"):
        embedder.embed(minilm(), ["a"])


def test_triton_without_any_address_says_what_to_configure():
    embedder, _, _ = triton_embedder(FakeTritonClient(), default="")
    with pytest.raises(FailedPrecondition, match="RECSTACK_TRITON_ADDR"):
        embedder.embed(minilm(), ["a"])


def test_model_server_timeout_override_reaches_the_deadline_message():
    deadline = InferenceServerException(
        msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"
    )
    server = TritonModelServer("h:1", 2.0, client=FakeTritonClient(errors=[deadline]))
    with pytest.raises(DeadlineExceeded, match=r"within 0\.3s"):
        server.infer("m", {"x": np.zeros((1, 1), np.float32)}, ["y"], timeout_s=0.3)
