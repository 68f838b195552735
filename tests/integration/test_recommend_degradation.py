"""Triton stops in the middle of traffic: Recommend keeps answering, flagged `degraded`, and
ranks again by itself once Triton is back, with no restart of the recommend service.

A tritonserver of its own (the session's is shared by every test) serves the fixed-weight
`ranker`; the recommend service runs on real PostgreSQL with in-memory stand-ins for the
registry, the online store and serving.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import recommend_service_pb2_grpc, scene_pb2
from recstack.registry.v1 import entity_pb2, feature_view_pb2

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, TritonServer
from services.recommend.server import (
    MIGRATIONS,
    SCHEMA,
    RecommendDeps,
    RecommendSettings,
    create_server,
)
from shared.channels import open_channel
from shared.db import create_engine
from shared.feature_views import Feature, ViewSchema
from shared.migrations import upgrade
from shared.model_server import TritonModelServer
from shared.online_store import Scan, ViewColumns
from tests.scenes import params

VT = value_pb2.ValueType
NOW = datetime(2026, 12, 1, tzinfo=UTC)
FEATURES = tuple(f"f{i}" for i in range(8))  # the ranker's 8 inputs
ITEMS = ViewSchema(
    "shop",
    "items",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("popularity", VT.VALUE_TYPE_DOUBLE),
        *(Feature(f, VT.VALUE_TYPE_DOUBLE) for f in FEATURES),
    ),
)
ITEM_IDS = list(range(1, 31))
RESUME_LIMIT_S = 20.0


class Definitions:
    def feature_view(self, project, view_id, version=0):
        return feature_view_pb2.FeatureView(name=view_id, entity="item")

    def view_schema(self, project, view_id, version=0):
        return ITEMS

    def entity(self, project, entity_id):
        return entity_pb2.Entity(join_key=f"{entity_id}_id", key_type=VT.VALUE_TYPE_INT64)

    def model(self, project, model_id):
        raise AssertionError("the scene ranks with a bare model")


class OnlineStore:
    def scan_since(self, view, features, since):
        if since is not None:
            return Scan([], ViewColumns({f: [] for f in features}, []), NOW)
        values = {"popularity": [float(i) for i in ITEM_IDS]}
        values |= {f: [((i * (n + 3)) % 7) / 7 for i in ITEM_IDS] for n, f in enumerate(FEATURES)}
        return Scan(list(ITEM_IDS), ViewColumns({f: values[f] for f in features}, [NOW] * 30), NOW)

    def read(self, requests, keys):
        [(_, features)] = requests
        return [ViewColumns({f: [None] * len(keys) for f in features}, [None] * len(keys))]


class UserFeatures:
    def read(self, project, refs, key, key_type):
        return {}


@pytest.fixture(scope="module")
def triton():
    server = TritonServer(DEFAULT_MODEL_REPOSITORY, models=["ranker"])
    server.start()
    server.wait_ready(90)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def recommend(database_url, triton):
    engine = create_engine(database_url, pool_size=2)
    upgrade(engine, schema=SCHEMA, script_location=MIGRATIONS)
    settings = RecommendSettings(grpc_port=0, database_url=database_url)
    model_server = TritonModelServer(triton.grpc_address, timeout_s=1.0)
    deps = RecommendDeps(engine, OnlineStore(), Definitions(), model_server, UserFeatures())
    running, port = create_server(settings, deps)
    with open_channel(f"127.0.0.1:{port}") as channel:
        stub = recommend_service_pb2_grpc.RecommendServiceStub(channel)
        stub.CreateScene(
            pb.CreateSceneRequest(
                scene_id="degrading",
                scene=scene_pb2.Scene(
                    project="shop",
                    user_entity="user",
                    item_entity="item",
                    recalls=[
                        scene_pb2.StageConfig(
                            type="popularity",
                            quota=30,
                            params=params(feature_view="items", feature="popularity"),
                        )
                    ],
                    rank=scene_pb2.RankConfig(
                        model_name="ranker",
                        features=[f"items:{f}" for f in FEATURES],
                        score_output="probs_ctr",
                    ),
                    reranks=[scene_pb2.StageConfig(type="top_n")],
                    top_n=10,
                ),
            )
        )
        yield stub
    running.stop(0)
    model_server.close()
    engine.dispose()


def ask(stub) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(scene="degrading", user_id="7"), timeout=10)


def test_triton_stopping_degrades_recommend_and_its_return_resumes_ranking(recommend, triton):
    ranked = ask(recommend)
    assert not ranked.degraded
    assert [item.item_id for item in ranked.items] != [str(i) for i in range(30, 20, -1)]

    triton.stop()
    try:
        degraded = [ask(recommend) for _ in range(5)]
    finally:
        triton.start()
    triton.wait_ready(90)
    back = time.monotonic()
    while (response := ask(recommend)).degraded:
        assert time.monotonic() - back < RESUME_LIMIT_S, "ranking did not resume"
        time.sleep(0.1)

    for response_ in degraded:
        assert response_.degraded
        assert response_.degraded_reason.startswith("MODEL_SERVER_UNAVAILABLE")
        # Recall order: the most popular first.
        assert [item.item_id for item in response_.items] == [str(i) for i in range(30, 20, -1)]
    assert [item.item_id for item in response.items] == [item.item_id for item in ranked.items]
