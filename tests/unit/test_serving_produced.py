"""Real-time writes of views with produced fields: raw text in, vectors stored."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from recstack.registry.v1 import embedding_model_pb2

from services.serving.features import FeatureServer, RowInput, TypedValue
from shared.embeddings import Embeddings, EmbeddingStats
from shared.errors import FailedPrecondition, InvalidArgument, Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.online_store import WriteResult
from shared.values import VT

NOW = datetime(2026, 11, 1, tzinfo=UTC)
VIEW = ViewSchema(
    "shop",
    "item_reviews",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("review_text", VT.VALUE_TYPE_STRING),
        Feature("review_text_embedding", VT.VALUE_TYPE_FLOAT_LIST, "minilm", "review_text"),
    ),
)


class Definitions:
    def view_schema(self, project, view_id, version=0):
        return VIEW

    def model_feature_set(self, project, set_id):
        raise AssertionError("not used")

    def embedding_model(self, project, model_id):
        return embedding_model_pb2.EmbeddingModel(
            name=f"projects/{project}/embeddingModels/{model_id}",
            model_type=embedding_model_pb2.EmbeddingModel.MODEL_TYPE_TEXT_EMBEDDING,
            provider=embedding_model_pb2.EmbeddingModel.PROVIDER_TRITON,
            model_name="minilm",
            dimension=2,
        )


class Store:
    def __init__(self):
        self.rows = []

    def write(self, view, rows):
        self.rows.extend(rows)
        return WriteResult(len(rows), 0)


class Embedder:
    def __init__(self, error=None):
        self.texts = []
        self.error = error

    def embed(self, model, texts):
        if self.error:
            raise self.error
        self.texts.append(list(texts))
        vectors = np.array([[len(text), 1.0] for text in texts], np.float32)
        return Embeddings(vectors, np.ones(len(texts), bool), EmbeddingStats(texts=len(texts)))


def row(item_id, text=None, vector=None):
    values = {"item_id": TypedValue(item_id, "int64_value")}
    if text is not None:
        values["review_text"] = TypedValue(text, "string_value")
    if vector is not None:
        values["review_text_embedding"] = TypedValue(vector, "float_list_value")
    return RowInput(values, NOW)


def server(embedder):
    store = Store()
    return FeatureServer(store, Definitions(), embedder=embedder), store


def test_pushed_text_is_embedded_before_the_upsert():
    embedder = Embedder()
    features, store = server(embedder)
    features.write("shop", "item_reviews", 0, [row(1, "great"), row(2), row(3, "ok")])
    assert embedder.texts == [["great", "ok"]]
    assert [(r[0], r[1], r[2]) for r in store.rows] == [
        (1, "great", [5.0, 1.0]),
        (2, None, None),
        (3, "ok", [2.0, 1.0]),
    ]


def test_a_vector_sent_with_the_row_is_kept_when_it_has_the_model_dimension():
    embedder = Embedder()
    features, store = server(embedder)
    features.write("shop", "item_reviews", 0, [row(1, "great", [0.5, 0.5])])
    assert embedder.texts == []
    assert store.rows[0][2] == [0.5, 0.5]
    with pytest.raises(InvalidArgument, match=r"3 dimensions; .* declares 2") as caught:
        features.write("shop", "item_reviews", 0, [row(1, "great", [0.5, 0.5, 0.5])])
    assert caught.value.field == "rows[0].values.review_text_embedding"


def test_nothing_is_stored_when_the_model_fails():
    features, store = server(Embedder(error=Unavailable("model down")))
    with pytest.raises(Unavailable, match="model down"):
        features.write("shop", "item_reviews", 0, [row(1, "great")])
    assert store.rows == []


def test_without_an_embedder_the_write_is_refused():
    features, store = server(None)
    with pytest.raises(FailedPrecondition, match="no embedder"):
        features.write("shop", "item_reviews", 0, [row(1, "great")])
    assert store.rows == []
