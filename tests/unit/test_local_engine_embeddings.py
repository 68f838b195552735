"""The local engine computing produced (LLM_EMBEDDING) fields with a fake embedder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.jobs import (
    EmbeddingField,
    FileSourceSpec,
    MaterializationTask,
    SqlTransformation,
    Store,
    Window,
)
from shared.embeddings import Embeddings, EmbeddingStats, ModelSettings, Provider
from shared.errors import FailedPrecondition, Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.values import VT
from tests.unit.test_local_engine import FakeOffline, FakeOnline

T0 = datetime(2026, 4, 1, tzinfo=UTC)
DAY = Window(T0, T0 + timedelta(days=1))
MODEL = ModelSettings(
    name="projects/p/embeddingModels/m",
    provider=Provider.TRITON,
    model_name="minilm",
    dimension=3,
    max_input_tokens=256,
    batch_size=2,
    concurrency=1,
    endpoint="",
    credential="",
    max_retries=0,
    initial_backoff_s=0.5,
    call_timeout_s=30.0,
)
VIEW = ViewSchema(
    "p",
    "reviews",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("review_text", VT.VALUE_TYPE_STRING),
        Feature("embedding", VT.VALUE_TYPE_FLOAT_LIST, MODEL.name, "review_text"),
    ),
)
EMBEDDING = (EmbeddingField("embedding", "review_text", MODEL),)


def vector_of(text: str) -> list[float]:
    return [float(len(text)), float(text.count(" ")), 1.0]


class FakeEmbedder:
    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[str | None]] = []
        self.fail_after = fail_after

    def embed(self, model, texts):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Unavailable("the model went away")
        self.calls.append(list(texts))
        valid = np.array([text is not None for text in texts])
        vectors = np.array(
            [vector_of(text) if text is not None else [0.0] * 3 for text in texts], np.float32
        )
        stats = EmbeddingStats(texts=int(valid.sum()), embedded=int(valid.sum()), model_calls=1)
        return Embeddings(vectors, valid, stats)


@pytest.fixture
def raw_reviews(tmp_path):
    """Reviews with the raw column names of the product reviews dataset."""
    path = tmp_path / "reviews.parquet"
    table = pa.table(
        {
            "Clothing ID": pa.array([1, 2, 1, 3], pa.int64()),
            "Review Text": ["fits well", None, "runs small on me", "lovely"],
            "event_ts": pa.array(
                [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2), T0 + timedelta(days=2)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, path)
    return FileSourceSpec(str(path), "PARQUET", "event_ts")


RAW_SQL = SqlTransformation(
    'SELECT "Clothing ID" AS item_id, "Review Text" AS review_text, event_ts FROM source'
)


def run(task, embedder, chunk_rows=10_000):
    offline, online = FakeOffline(), FakeOnline()
    progress = LocalEngine(chunk_rows=chunk_rows, embedder=embedder).run(
        task, offline_store=offline, online_store=online, on_chunk=lambda progress: True
    )
    rows = sorted(
        (row for table in offline.tables for row in table.to_pylist()),
        key=lambda row: row["event_ts"],
    )
    return rows, online, progress


def test_produced_fields_are_embedded_from_their_input_field_into_both_stores(raw_reviews):
    embedder = FakeEmbedder()
    task = MaterializationTask(
        VIEW,
        raw_reviews,
        DAY,
        (Store.OFFLINE, Store.ONLINE),
        "job1",
        None,
        RAW_SQL,
        embeddings=EMBEDDING,
    )
    rows, online, progress = run(task, embedder)
    assert [(row["item_id"], row["embedding"]) for row in rows] == [
        (1, pytest.approx(vector_of("fits well"))),
        (2, None),  # no text, no vector
        (1, pytest.approx(vector_of("runs small on me"))),
    ]
    assert online.latest[1]["embedding"] == pytest.approx(vector_of("runs small on me"))
    assert online.latest[2]["embedding"] is None
    assert embedder.calls == [["fits well", None, "runs small on me"]]
    assert progress.texts_embedded == 2 and progress.embedding_calls == 1


def test_sources_need_not_carry_the_produced_column(raw_reviews):
    # The SQL above never mentions `embedding`: the engine fills it, the source lacks it.
    task = MaterializationTask(
        VIEW, raw_reviews, DAY, (Store.OFFLINE,), "job1", None, RAW_SQL, embeddings=EMBEDDING
    )
    rows, _, _ = run(task, FakeEmbedder())
    assert len(rows) == 3
    assert rows[0]["embedding"] is not None


def test_views_with_embeddings_go_in_small_chunks(tmp_path):
    path = tmp_path / "many.parquet"
    count = 10_000
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(range(count), pa.int64()),
                "review_text": [f"review {i}" for i in range(count)],
                "event_ts": pa.array([T0] * count, pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    task = MaterializationTask(
        VIEW,
        FileSourceSpec(str(path), "PARQUET", "event_ts"),
        DAY,
        (Store.OFFLINE,),
        "job1",
        embeddings=EMBEDDING,
    )
    embedder = FakeEmbedder()
    _, _, progress = run(task, embedder, chunk_rows=1_000_000)
    # Heartbeats and cancellation happen between chunks, so a chunk must not wait long.
    assert max(len(call) for call in embedder.calls) <= 4_096
    assert progress.rows_read == count and progress.texts_embedded == count


def test_a_model_failure_fails_the_run(raw_reviews):
    task = MaterializationTask(
        VIEW, raw_reviews, DAY, (Store.OFFLINE,), "job1", None, RAW_SQL, embeddings=EMBEDDING
    )
    with pytest.raises(Unavailable, match="went away"):
        run(task, FakeEmbedder(fail_after=0))


def test_without_an_embedder_produced_fields_fail_clearly(raw_reviews):
    task = MaterializationTask(
        VIEW, raw_reviews, DAY, (Store.OFFLINE,), "job1", None, RAW_SQL, embeddings=EMBEDDING
    )
    with pytest.raises(FailedPrecondition, match="no embedder"):
        run(task, None)


def test_precomputed_vectors_are_checked_not_embedded(tmp_path):
    path = tmp_path / "precomputed.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array([1, 2], pa.int64()),
                "review_text": ["a", "b"],
                "embedding": pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]], pa.list_(pa.float32())),
                "event_ts": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    task = MaterializationTask(
        VIEW,
        FileSourceSpec(str(path), "PARQUET", "event_ts"),
        DAY,
        (Store.OFFLINE,),
        "job1",
        vector_dimensions={"embedding": 3},
    )
    embedder = FakeEmbedder()
    with pytest.raises(FailedPrecondition, match=r"key 2.* 2 dimensions"):
        run(task, embedder)
    assert embedder.calls == []
