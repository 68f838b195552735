"""The content-hash cache of vectors: (model cache key, sha256 of the normalised text) → vector.

PostgreSQL table `embeddings.text_embeddings` (migrations/ beside this file), vectors as
float32 little-endian bytes. A lookup is one round trip for a whole call; a write is one
statement per batch, first writer wins. The cache only grows: rows of models no longer used
can be deleted by `model_key` at any time, costing only a re-embedding.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np
import psycopg
from psycopg import errors

from shared.db import to_libpq
from shared.errors import FailedPrecondition, Unavailable
from shared.pg_pool import ResilientPool

SCHEMA = "embeddings"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VECTOR_DTYPE = np.dtype("<f4")

_GET = (
    "SELECT text_hash, vector FROM embeddings.text_embeddings "
    "WHERE model_key = %s AND text_hash = ANY(%s)"
)
# Hashes go in sorted: concurrent writers of overlapping batches then take the unique-index
# slots in the same order and cannot deadlock. A stored vector is replaced only when its
# length is wrong (a corrupt row, which readers treat as a miss), never by a second writer.
_PUT = """
INSERT INTO embeddings.text_embeddings AS stored (model_key, text_hash, vector)
SELECT %s, batch.text_hash, batch.vector
FROM unnest(%s::bytea[], %s::bytea[]) AS batch(text_hash, vector)
ON CONFLICT (model_key, text_hash) DO UPDATE
SET vector = EXCLUDED.vector, created_at = now()
WHERE octet_length(stored.vector) <> octet_length(EXCLUDED.vector)
"""


class EmbeddingCache(Protocol):
    def get(self, model_key: str, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored vectors of those of `hashes` that are cached (others are absent)."""
        ...

    def put(self, model_key: str, vectors: Mapping[bytes, np.ndarray]) -> None:
        """Store vectors; an entry already stored is kept."""
        ...


def migrate_cache(database_url: str) -> None:
    """Create or upgrade schema `embeddings` (idempotent; concurrent starters queue)."""
    # Alembic is imported only by the processes that migrate.
    from shared.migrations import upgrade

    upgrade(database_url, schema=SCHEMA, script_location=MIGRATIONS)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(data, dtype=VECTOR_DTYPE).astype(np.float32)


class InMemoryEmbeddingCache:
    """A process-local `EmbeddingCache` (tests, tools); stores copies, as PostgreSQL would."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()

    def get(self, model_key: str, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        with self._lock:
            found = {h: self.vectors.get((model_key, h)) for h in hashes}
        return {h: from_bytes(data) for h, data in found.items() if data is not None}

    def put(self, model_key: str, vectors: Mapping[bytes, np.ndarray]) -> None:
        with self._lock:
            for text_hash, vector in vectors.items():
                self.vectors.setdefault((model_key, text_hash), to_bytes(vector))


class PostgresEmbeddingCache:
    """`EmbeddingCache` on PostgreSQL; `conninfo` is a libpq string or any PostgreSQL URL."""

    def __init__(self, conninfo: str, *, max_size: int = 8) -> None:
        if "://" in conninfo:
            conninfo = to_libpq(conninfo)
        self._pool = ResilientPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            name="embedding-cache",
            what="embedding-cache",
        )

    def get(self, model_key: str, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        if not hashes:
            return {}
        rows = self._pool.retrying(lambda: self._get(model_key, hashes))
        return {bytes(text_hash): from_bytes(vector) for text_hash, vector in rows}

    def put(self, model_key: str, vectors: Mapping[bytes, np.ndarray]) -> None:
        if not vectors:
            return
        hashes = sorted(vectors)
        payload = [to_bytes(vectors[text_hash]) for text_hash in hashes]
        self._pool.retrying(lambda: self._put(model_key, hashes, payload))

    def _get(self, model_key: str, hashes: Sequence[bytes]) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(_GET, (model_key, list(hashes)), binary=True).fetchall()

    def _put(self, model_key: str, hashes: list[bytes], payload: list[bytes]) -> None:
        with self._connection() as conn:
            conn.execute(_PUT, (model_key, hashes, payload))

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except errors.UndefinedTable as exc:
            raise FailedPrecondition(
                "the embedding cache table embeddings.text_embeddings does not exist: run "
                "shared.embeddings.migrate_cache(database_url) (services do at start), or "
                "`python -m shared.migrations upgrade shared/embeddings/migrations "
                "--schema embeddings`",
                reason="EMBEDDING_CACHE_NOT_MIGRATED",
            ) from exc
        except Unavailable as exc:
            # ConnectionLost included: `retrying` still sees it for what it is.
            exc.reason = "EMBEDDING_CACHE_UNAVAILABLE"
            raise
