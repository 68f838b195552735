"""The embedding cache on the real PostgreSQL, alone and under the Embedder."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from shared.db import create_database, drop_database, to_libpq
from shared.embeddings import (
    Embedder,
    EmbeddingMetrics,
    ModelSettings,
    PostgresEmbeddingCache,
    Provider,
    ProviderReply,
    RetryableError,
    migrate_cache,
    text_hash,
)
from shared.errors import FailedPrecondition, Unavailable

KEY = "text-embedding-v4:0123456789abcdef"


def vector_of(text: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)


class CountingProvider:
    """Embeds deterministically; after `healthy_calls` calls it only fails (retryably)."""

    def __init__(self, healthy_calls: int | None = None) -> None:
        self.healthy_calls = healthy_calls
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, model, texts, timeout_s):
        with self._lock:
            self.calls.append(list(texts))
            number = len(self.calls)
        if self.healthy_calls is not None and number > self.healthy_calls:
            raise RetryableError("HTTP 503: provider went away")
        return ProviderReply(np.stack([vector_of(text, model.dimension) for text in texts]))

    def describe(self, model):
        return "the counting provider"

    def close(self):
        pass

    @property
    def sent(self) -> list[str]:
        return [text for call in self.calls for text in call]


def model(**overrides) -> ModelSettings:
    values = {
        "name": "projects/shop/embeddingModels/reviews",
        "provider": Provider.OPENAI_COMPATIBLE,
        "model_name": "text-embedding-v4",
        "dimension": 16,
        "max_input_tokens": 8192,
        "batch_size": 5,
        "concurrency": 1,
        "endpoint": "http://embeddings.test",
        "credential": "",
        "max_retries": 1,
        "initial_backoff_s": 0.01,
        "call_timeout_s": 5.0,
    }
    values.update(overrides)
    return ModelSettings(**values)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    migrate_cache(database_url)
    return database_url


@pytest.fixture
def cache(migrated: str) -> Iterator[PostgresEmbeddingCache]:
    with psycopg.connect(to_libpq(migrated), autocommit=True) as conn:
        conn.execute("TRUNCATE embeddings.text_embeddings")
    store = PostgresEmbeddingCache(migrated, max_size=4)
    try:
        yield store
    finally:
        store.close()


def embedder_on(cache, provider) -> Embedder:
    return Embedder(
        cache,
        triton_address="127.0.0.1:1",
        metrics=EmbeddingMetrics(CollectorRegistry()),
        sleep=lambda seconds: None,
        providers={Provider.OPENAI_COMPATIBLE: provider},
    )


def rows(url: str) -> list[tuple]:
    with psycopg.connect(to_libpq(url)) as conn:
        return conn.execute(
            "SELECT model_key, text_hash, vector, created_at FROM embeddings.text_embeddings "
            "ORDER BY text_hash"
        ).fetchall()


def test_migrate_cache_creates_the_table_and_is_idempotent(migrated):
    migrate_cache(migrated)
    migrate_cache(migrated)
    with psycopg.connect(to_libpq(migrated)) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'embeddings' AND table_name = 'text_embeddings' "
            "ORDER BY ordinal_position"
        ).fetchall()
        key = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = 'embeddings.text_embeddings'::regclass AND i.indisprimary"
        ).fetchone()[0]
        version = conn.execute("SELECT version_num FROM embeddings.alembic_version").fetchall()
    assert columns == [
        ("model_key", "text", "NO"),
        ("text_hash", "bytea", "NO"),
        ("vector", "bytea", "NO"),
        ("created_at", "timestamp with time zone", "NO"),
    ]
    assert key == ["model_key", "text_hash"]
    assert version == [("0001",)]


def test_put_then_get_round_trips_exact_float32(cache, migrated):
    special = np.array([0.0, -0.0, 1e-38, -3.4e38, np.pi, 1 / 3, 7.0, -1.5], dtype=np.float32)
    vectors = {
        text_hash("a"): special,
        text_hash("b"): np.arange(8, dtype=np.float32),
    }
    cache.put(KEY, vectors)

    found = cache.get(KEY, [text_hash("a"), text_hash("b"), text_hash("absent")])

    assert set(found) == {text_hash("a"), text_hash("b")}
    for text_hash_, vector in vectors.items():
        assert found[text_hash_].dtype == np.float32
        assert found[text_hash_].tobytes() == vector.tobytes()
    stored = {bytes(row[1]): bytes(row[2]) for row in rows(migrated)}
    assert stored[text_hash("a")] == special.astype("<f4").tobytes()
    assert cache.get("another-model:0", [text_hash("a")]) == {}
    assert cache.get(KEY, []) == {}


def test_first_writer_wins_but_a_wrong_length_row_is_replaced(cache):
    first = np.ones(4, np.float32)
    cache.put(KEY, {text_hash("a"): first, text_hash("b"): np.ones(3, np.float32)})

    cache.put(KEY, {text_hash("a"): np.zeros(4, np.float32), text_hash("b"): first})

    found = cache.get(KEY, [text_hash("a"), text_hash("b")])
    np.testing.assert_array_equal(found[text_hash("a")], first)
    np.testing.assert_array_equal(found[text_hash("b")], first)


def test_a_second_embed_makes_no_provider_call(cache):
    provider = CountingProvider()
    embedder = embedder_on(cache, provider)
    texts = [f"review {i}" for i in range(23)] + [None]

    first = embedder.embed(model(), texts)
    second = embedder.embed(model(), texts)

    assert first.stats.model_calls == 5
    assert first.stats.embedded == 23
    assert second.stats.model_calls == 0
    assert second.stats.cache_hits == 23
    assert second.stats.embedded == 0
    assert len(provider.calls) == 5
    np.testing.assert_array_equal(second.vectors, first.vectors)
    np.testing.assert_array_equal(second.valid, first.valid)
    np.testing.assert_array_equal(second.vectors[7], vector_of("review 7", 16))


def test_batches_paid_for_before_a_failure_stay_cached(cache):
    texts = [f"text {i}" for i in range(20)]
    dying = CountingProvider(healthy_calls=2)

    with pytest.raises(Unavailable, match="provider went away"):
        embedder_on(cache, dying).embed(model(batch_size=5, concurrency=1), texts)

    healthy = CountingProvider()
    result = embedder_on(cache, healthy).embed(model(batch_size=5, concurrency=1), texts)

    paid = dying.sent[:10]  # the two batches that returned before the provider died
    assert sorted(healthy.sent) == sorted(set(texts) - set(paid))
    assert (result.stats.cache_hits, result.stats.embedded, result.stats.model_calls) == (
        10,
        10,
        2,
    )
    for row, text in enumerate(texts):
        np.testing.assert_array_equal(result.vectors[row], vector_of(text, 16))


def test_concurrent_writers_of_overlapping_texts_agree(cache, migrated):
    provider = CountingProvider()
    embedder = embedder_on(cache, provider)
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        texts = [f"shared {(offset * 7 + i) % 60}" for i in range(40)]
        try:
            result = embedder.embed(model(batch_size=4, concurrency=4), texts)
            for row, text in enumerate(texts):
                np.testing.assert_array_equal(result.vectors[row], vector_of(text, 16))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(offset,)) for offset in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(rows(migrated)) == 60


def test_an_unmigrated_database_says_to_run_migrate_cache(postgres_server_url):
    name = f"recstack_test_{secrets.token_hex(6)}"
    url = create_database(postgres_server_url, name)
    try:
        with (
            PostgresEmbeddingCache(url, max_size=1) as store,
            pytest.raises(FailedPrecondition) as excinfo,
        ):
            store.get(KEY, [text_hash("a")])
        assert excinfo.value.reason == "EMBEDDING_CACHE_NOT_MIGRATED"
        assert "migrate_cache" in excinfo.value.message
    finally:
        drop_database(postgres_server_url, name)
