"""Each recall type through the recommend service over gRPC, its item features read from the
real PostgreSQL online store, the vector recall over minilm review embeddings computed by the
real Triton: a scene per recall, then all four in one scene.

The registry and the user-feature reader are in-memory stand-ins (as in
test_recommend_scenes); scenes keep recall order (no rank model), so each response is the
recall's own order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import recommend_service_pb2_grpc, scene_pb2
from recstack.registry.v1 import entity_pb2, feature_view_pb2

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY
from services.recommend.server import (
    MIGRATIONS,
    SCHEMA,
    RecommendDeps,
    RecommendSettings,
    create_server,
)
from shared.channels import open_channel
from shared.db import create_engine, to_libpq
from shared.embeddings import (
    Embedder,
    EmbeddingMetrics,
    InMemoryEmbeddingCache,
    ModelSettings,
    Provider,
)
from shared.errors import NotFound
from shared.feature_views import Feature, ViewSchema
from shared.migrations import upgrade
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import TYPES, VT

MINILM_ONNX = DEFAULT_MODEL_REPOSITORY / "minilm" / "1" / "model.onnx"
pytestmark = pytest.mark.skipif(
    not MINILM_ONNX.is_file(), reason=f"{MINILM_ONNX} is missing: run `make models`"
)

PROJECT = f"recalls_{uuid.uuid4().hex[:6]}"
NOW = datetime(2026, 11, 23, tzinfo=UTC)
REVIEWS = {
    1: "This dress runs small, order a size up.",
    2: "The dress is too tight; buy the next size.",
    3: "Lovely dress but it is small, size up.",
    4: "Shipping to Norway took three weeks.",
    5: "The parcel arrived late and the box was damaged.",
    6: None,
}


def view(name: str, **features: int) -> ViewSchema:
    return ViewSchema(
        PROJECT,
        name,
        1,
        "item_id",
        VT.VALUE_TYPE_INT64,
        tuple(Feature(n, t) for n, t in features.items()),
    )


VIEWS = {
    "item_review_text": view(
        "item_review_text",
        review_text=VT.VALUE_TYPE_STRING,
        review_text_embedding=VT.VALUE_TYPE_FLOAT_LIST,
    ),
    "item_similar": view(
        "item_similar",
        similar_items=VT.VALUE_TYPE_INT64_LIST,
        similar_scores=VT.VALUE_TYPE_DOUBLE_LIST,
    ),
    "item_popularity": view("item_popularity", ratings_30d=VT.VALUE_TYPE_INT64),
    "item_attributes": view("item_attributes", genres=VT.VALUE_TYPE_STRING_LIST),
}
# The user features the scenes read (served by the stand-in reader below).
USER_HISTORY = ViewSchema(
    PROJECT,
    "user_history",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("recent_items", VT.VALUE_TYPE_INT64_LIST),
        Feature("genre_counts", VT.VALUE_TYPE_STRING_DOUBLE_MAP),
    ),
)
SCHEMAS = {**VIEWS, "user_history": USER_HISTORY}
USERS = {
    1: {
        "user_history:recent_items": [1],
        "user_history:genre_counts": {"Dresses": 5.0, "Shipping": 1.0},
    },
}


class Definitions:
    def feature_view(self, project, view_id, version=0):
        if view_id not in SCHEMAS:
            raise NotFound(f"projects/{project}/featureViews/{view_id} does not exist")
        entity = "user" if view_id == "user_history" else "item"
        return feature_view_pb2.FeatureView(name=view_id, entity=entity)

    def view_schema(self, project, view_id, version=0):
        self.feature_view(project, view_id)
        return SCHEMAS[view_id]

    def entity(self, project, entity_id):
        return entity_pb2.Entity(join_key=f"{entity_id}_id", key_type=VT.VALUE_TYPE_INT64)

    def model(self, project, model_id):
        raise NotFound(f"projects/{project}/models/{model_id} does not exist")

    def active_model(self, project, model_id):
        raise NotFound(f"projects/{project}/models/{model_id} does not exist")


class UserFeatures:
    def read(self, project, refs, key, key_type):
        return {ref: USERS.get(key, {}).get(ref) for ref in refs}


class NoModelServer:
    def infer(self, model, inputs, outputs, *, version=""):
        raise AssertionError("these scenes rank by recall order")

    def is_ready(self, model=None):
        return True


@pytest.fixture(scope="module")
def review_vectors(triton_server) -> dict[int, list[float] | None]:
    """The minilm embedding of each review, from the real Triton (None: no text)."""
    embedder = Embedder(
        InMemoryEmbeddingCache(),
        triton_address=triton_server.grpc_address,
        metrics=EmbeddingMetrics(CollectorRegistry()),
    )
    settings = ModelSettings(
        name=f"projects/{PROJECT}/embeddingModels/minilm",
        provider=Provider.TRITON,
        model_name="minilm",
        dimension=384,
        max_input_tokens=256,
        batch_size=8,
        concurrency=1,
        endpoint="",
        credential="",
        max_retries=2,
        initial_backoff_s=0.05,
        call_timeout_s=30.0,
    )
    try:
        result = embedder.embed(settings, list(REVIEWS.values()))
    finally:
        embedder.close()
    return {
        item: result.vectors[row].tolist() if result.valid[row] else None
        for row, item in enumerate(REVIEWS)
    }


@pytest.fixture(scope="module")
def online_store(database_url, review_vectors) -> Iterator[PostgresOnlineStore]:
    store = PostgresOnlineStore(to_libpq(database_url), min_size=1, max_size=4)
    rows = {
        "item_review_text": {
            "review_text": list(REVIEWS.values()),
            "review_text_embedding": list(review_vectors.values()),
        },
        "item_similar": {
            "similar_items": [[2, 4], [1, 3], [6], [5], None, [1]],
            "similar_scores": [[0.9, 0.1], [0.8, 0.7], [0.5], [0.4], None, [0.3]],
        },
        "item_popularity": {"ratings_30d": [40, 10, 30, 50, 20, None]},
        "item_attributes": {
            "genres": [["Dresses"], ["Dresses"], ["Dresses"], ["Shipping"], ["Shipping"], []]
        },
    }
    for name, columns in rows.items():
        schema = VIEWS[name]
        data = {"item_id": pa.array(list(REVIEWS), pa.int64())}
        for feature in schema.features:
            data[feature.name] = pa.array(columns[feature.name], TYPES[feature.value_type].arrow)
        data["event_ts"] = pa.array([NOW] * len(REVIEWS), pa.timestamp("us", tz="UTC"))
        store.ensure_table(schema)
        store.bulk_load(schema, pa.table(data))
    yield store
    for schema in VIEWS.values():
        store.drop_table(schema)
    store.close()


@pytest.fixture(scope="module")
def stub(database_url, online_store):
    engine = create_engine(database_url, pool_size=4)
    upgrade(engine, schema=SCHEMA, script_location=MIGRATIONS)
    settings = RecommendSettings(grpc_port=0, database_url=database_url)
    deps = RecommendDeps(engine, online_store, Definitions(), NoModelServer(), UserFeatures())
    running, port = create_server(settings, deps)
    with open_channel(f"127.0.0.1:{port}") as channel:
        yield recommend_service_pb2_grpc.RecommendServiceStub(channel)
    running.stop(0)
    engine.dispose()


@pytest.fixture(autouse=True)
def empty_tables(database_url):
    engine = create_engine(database_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE recommend.scenes, recommend.experiments"))
    engine.dispose()


def recall(stage_type: str, quota: int = 10, **params) -> scene_pb2.StageConfig:
    values = struct_pb2.Struct()
    values.update(params)
    return scene_pb2.StageConfig(type=stage_type, quota=quota, params=values)


VECTOR = recall(
    "vector",
    feature_view="item_review_text",
    feature="review_text_embedding",
    user_history="user_history:recent_items",
    metric="cosine",
)
ITEM_TO_ITEM = recall(
    "item_to_item", feature_view="item_similar", user_history="user_history:recent_items"
)
POPULAR = recall("popular", quota=3, feature_view="item_popularity", feature="ratings_30d")
AFFINITY = recall(
    "category_affinity",
    quota=4,
    user_categories="user_history:genre_counts",
    top_categories=2,
    feature_view="item_popularity",
    feature="ratings_30d",
    category="item_attributes:genres",
)


def recommend(stub, *recalls: scene_pb2.StageConfig, user: int = 1) -> pb.RecommendResponse:
    scene_id = f"s{uuid.uuid4().hex[:8]}"
    scene = scene_pb2.Scene(
        project=PROJECT,
        user_entity="user",
        item_entity="item",
        recalls=list(recalls),
        rank=scene_pb2.RankConfig(),
        reranks=[],
        top_n=20,
    )
    stub.CreateScene(pb.CreateSceneRequest(scene_id=scene_id, scene=scene))
    return stub.Recommend(pb.RecommendRequest(scene=scene_id, user_id=str(user), debug=True))


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def test_vector_recall_over_minilm_review_embeddings(stub, review_vectors):
    response = recommend(stub, VECTOR)

    # The two other "runs small" reviews first, then the shipping ones; 6 has no text, so
    # no vector; 1 is the history.
    assert ids(response)[:2] in (["2", "3"], ["3", "2"])
    assert sorted(ids(response)) == ["2", "3", "4", "5"]
    first = np.asarray(review_vectors[1])
    similarities = [float(first @ np.asarray(review_vectors[int(i)])) for i in ids(response)]
    assert similarities == sorted(similarities, reverse=True)
    assert all(item.recall_sources == ["vector"] for item in response.items)


def test_item_to_item_recall_from_the_online_store(stub):
    # 1's list is [2, 4]: 2 at 0.9, 4 at 0.1.
    assert ids(recommend(stub, ITEM_TO_ITEM)) == ["2", "4"]


def test_popular_recall_from_the_online_store(stub):
    response = recommend(stub, POPULAR)

    assert ids(response) == ["4", "1", "3"]
    assert response.stage_counts["popular"] == 3


def test_category_affinity_recall_from_the_online_store(stub):
    # Dresses 5 : Shipping 1 over a quota of 4 → 3 and 1.
    assert ids(recommend(stub, AFFINITY)) == ["1", "4", "3", "2"]


def test_all_four_recalls_merge_with_every_source(stub):
    response = recommend(stub, VECTOR, ITEM_TO_ITEM, AFFINITY, POPULAR)

    sources = {item.item_id: list(item.recall_sources) for item in response.items}
    assert sources["2"] == ["vector", "item_to_item", "category_affinity"]
    assert sources["4"] == ["vector", "item_to_item", "category_affinity", "popular"]
    assert sources["1"] == ["category_affinity", "popular"]
    assert [response.stage_counts[n] for n in ("vector", "item_to_item")] == [4, 2]


def test_a_user_unknown_to_every_view_gets_popular_items_only(stub):
    response = recommend(stub, VECTOR, ITEM_TO_ITEM, AFFINITY, POPULAR, user=99)

    assert ids(response) == ["4", "1", "3"]
    assert [response.stage_counts[n] for n in ("vector", "item_to_item", "category_affinity")] == [
        0,
        0,
        0,
    ]


def test_a_recall_over_a_feature_that_is_no_vector_is_failed_precondition(stub):
    bad = recall(
        "vector",
        feature_view="item_popularity",
        feature="ratings_30d",
        user_history="user_history:recent_items",
    )

    with pytest.raises(grpc.RpcError) as caught:
        recommend(stub, bad)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not ARRAY<FLOAT>" in caught.value.details()


def test_bad_recall_params_are_refused_at_save_naming_the_field(stub):
    bad = recall("vector", feature_view="item_review_text", feature="review_text_embedding")
    scene = scene_pb2.Scene(
        project=PROJECT,
        user_entity="user",
        item_entity="item",
        recalls=[POPULAR, bad],
        top_n=5,
    )

    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateScene(pb.CreateSceneRequest(scene_id="bad", scene=scene))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("scene.recalls[1].params: give exactly one of")


@pytest.mark.parametrize(
    ("stage", "missing"),
    [
        (
            recall(
                "vector",
                feature_view="item_review_text",
                feature="review_embedding",
                user_history="user_history:recent_items",
            ),
            "no feature 'review_embedding'",
        ),
        (
            recall("item_to_item", feature_view="item_similar", user_history="user_history:items"),
            "no feature 'items'",
        ),
        (
            recall(
                "category_affinity",
                user_categories="user_history:genre_counts",
                feature_view="item_popularity",
                feature="ratings_30d",
                category="item_genres:genres",
            ),
            "item_genres does not exist",
        ),
    ],
)
def test_a_recall_naming_a_missing_feature_is_refused_at_save(stub, stage, missing):
    scene = scene_pb2.Scene(
        project=PROJECT, user_entity="user", item_entity="item", recalls=[stage], top_n=5
    )

    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateScene(pb.CreateSceneRequest(scene_id="missing", scene=scene))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith("scene.recalls[0].params: ")
    assert missing in caught.value.details()
