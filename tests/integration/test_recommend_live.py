"""Recommend on live data: items and interactions written through serving reach the pipeline
(the item cache's incremental refresh, the per-request user read), every filter and rerank
type on real PostgreSQL, cold-start users and the empty-result reason, over the real
services."""

from __future__ import annotations

import time
import uuid

import pytest
from google.protobuf import struct_pb2
from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc, scene_pb2
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
Field = feature_view_pb2.FeatureField
# The recommend fixture's cache reads new rows every 2 s; a write shows within two rounds.
REFRESH_LIMIT_S = 10.0


def struct(**values) -> struct_pb2.Struct:
    found = struct_pb2.Struct()
    found.update(values)
    return found


def stage(kind: str, **params) -> scene_pb2.StageConfig:
    return scene_pb2.StageConfig(type=kind, params=struct(**params))


def apply_push_views(
    registry_address, connect, project: str, views: dict[str, tuple[str, list[Field]]]
) -> None:
    """Entities `user` and `item`, and per view (its entity, its fields) a REAL_TIME view
    over a push source of its own."""
    definitions = [
        rpb.Definition(
            id="user", entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64)
        ),
        rpb.Definition(
            id="item", entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64)
        ),
    ]
    for view, (entity, fields) in views.items():
        definitions += [
            rpb.Definition(
                id=f"{view}_push",
                data_source=data_source_pb2.DataSource(
                    push=data_source_pb2.PushSource(schema=fields)
                ),
            ),
            rpb.Definition(
                id=view,
                feature_view=FV(
                    entity=entity,
                    source=f"{view}_push",
                    type=FV.TYPE_REAL_TIME,
                    online_enabled=True,
                    fields=fields,
                ),
            ),
        ]
    with connect(registry_address) as channel:
        registry_service_pb2_grpc.RegistryServiceStub(channel).Apply(
            rpb.ApplyRequest(parent=f"projects/{project}", definitions=definitions)
        )


@pytest.fixture(scope="module")
def project(registry_address, connect) -> str:
    project = f"live_{uuid.uuid4().hex[:8]}"
    item_fields = [
        Field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
        Field(name="popularity", value_type=VT.VALUE_TYPE_DOUBLE),
        Field(name="genre", value_type=VT.VALUE_TYPE_STRING),
        Field(name="in_stock", value_type=VT.VALUE_TYPE_BOOL),
    ]
    event_fields = [
        Field(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        Field(name="seen_items", value_type=VT.VALUE_TYPE_INT64_LIST),
    ]
    views = {"catalog": ("item", item_fields), "events": ("user", event_fields)}
    apply_push_views(registry_address, connect, project, views)
    return project


@pytest.fixture(scope="module")
def serving(serving_address, connect):
    with connect(serving_address) as channel:
        yield serving_service_pb2_grpc.FeatureServingServiceStub(channel)


@pytest.fixture(scope="module")
def recommend(recommend_address, connect):
    with connect(recommend_address) as channel:
        yield recommend_service_pb2_grpc.RecommendServiceStub(channel)


def write_items(serving, project: str, *items: tuple[int, float, str, bool]) -> None:
    rows = []
    for item_id, popularity, genre, in_stock in items:
        row = spb.FeatureRow(
            values={
                "item_id": value_pb2.Value(int64_value=item_id),
                "popularity": value_pb2.Value(double_value=popularity),
                "genre": value_pb2.Value(string_value=genre),
                "in_stock": value_pb2.Value(bool_value=in_stock),
            }
        )
        row.event_time.GetCurrentTime()
        rows.append(row)
    serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="catalog", rows=rows)
    )


def push_seen(serving, project: str, user_id: int, items: list[int]) -> None:
    row = spb.FeatureRow(
        values={
            "user_id": value_pb2.Value(int64_value=user_id),
            "seen_items": value_pb2.Value(int64_list_value=value_pb2.Int64List(values=items)),
        }
    )
    row.event_time.GetCurrentTime()
    serving.PushFeatures(
        iter([spb.PushFeaturesRequest(project=project, feature_view="events", rows=[row])])
    )


@pytest.fixture(scope="module")
def scene(project, serving, recommend) -> str:
    write_items(
        serving,
        project,
        (1, 90.0, "drama", True),
        (2, 80.0, "drama", True),
        (3, 70.0, "comedy", True),
        (4, 60.0, "horror", True),
        (5, 50.0, "drama", False),
        (7, 40.0, "comedy", True),
    )
    recommend.CreateScene(
        cpb.CreateSceneRequest(
            scene_id=project,
            scene=scene_pb2.Scene(
                project=project,
                user_entity="user",
                item_entity="item",
                recalls=[
                    scene_pb2.StageConfig(
                        type="popularity",
                        quota=50,
                        params=struct(feature_view="catalog", feature="popularity"),
                    )
                ],
                filters=[
                    stage("already_seen", features=["events:seen_items"]),
                    stage("item_state", feature="catalog:in_stock"),
                    stage(
                        "rules",
                        rules=[{"field": "catalog:genre", "op": "not in", "value": ["horror"]}],
                    ),
                ],
                reranks=[
                    stage(
                        "category_diversity", feature="catalog:genre", window=2, max_per_window=1
                    ),
                    scene_pb2.StageConfig(type="top_n"),
                ],
                top_n=10,
            ),
        )
    )
    return project


def recommended(recommend, scene: str, user: int) -> cpb.RecommendResponse:
    return recommend.Recommend(
        cpb.RecommendRequest(scene=scene, user_id=str(user), debug=True), timeout=10
    )


def test_filters_and_reranks_shape_the_list(scene, recommend):
    response = recommended(recommend, scene, 11)

    # Horror and out-of-stock items are gone; dramas and comedies alternate while both last.
    assert [item.item_id for item in response.items] == ["1", "3", "2", "7"]
    assert response.stage_counts["item_state"] == 5
    assert response.stage_counts["rules"] == 4
    assert not response.degraded
    assert set(response.stage_millis) >= {"user_features", "popularity", "rules", "top_n"}


def test_an_item_written_through_serving_is_recommended_within_the_refresh(
    scene, project, serving, recommend
):
    recommended(recommend, scene, 12)  # the cache holds the catalog now
    write_items(serving, project, (8, 99.0, "comedy", True))
    written = time.monotonic()

    while recommended(recommend, scene, 12).items[0].item_id != "8":
        assert time.monotonic() - written < REFRESH_LIMIT_S, "the new item never showed"
        time.sleep(0.1)


def test_an_interaction_pushed_through_serving_is_filtered_at_once(
    scene, project, serving, recommend
):
    before = [item.item_id for item in recommended(recommend, scene, 13).items]
    push_seen(serving, project, 13, [int(before[0])])

    after = [item.item_id for item in recommended(recommend, scene, 13).items]

    assert before[0] not in after
    assert after[0] == before[1] or after[0] in before


def test_a_user_no_view_knows_gets_the_popular_items(scene, recommend):
    response = recommended(recommend, scene, 987_654)

    assert response.items[0].item_id in {"1", "8"}
    assert response.empty_reason == ""


def test_when_every_candidate_is_filtered_the_list_is_empty_with_the_reason(
    scene, project, serving, recommend
):
    push_seen(serving, project, 14, [1, 2, 3, 4, 5, 7, 8])

    response = recommended(recommend, scene, 14)

    assert list(response.items) == []
    assert response.empty_reason == "every candidate was removed by stage 'already_seen'"


# --- the score-driven reranks on their own catalogue -------------------------------------------


@pytest.fixture(scope="module")
def shop(registry_address, connect, serving) -> str:
    """Items 1..4 by popularity 90, 80, 70, 60: 1, 2 and 4 nearly the same embedding, 3
    another; 3 released in 2024; 1 out of stock, 4 with no stock figure."""
    project = f"shop_{uuid.uuid4().hex[:8]}"
    fields = [
        Field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
        Field(name="popularity", value_type=VT.VALUE_TYPE_DOUBLE),
        Field(name="release_year", value_type=VT.VALUE_TYPE_INT64),
        Field(name="stock", value_type=VT.VALUE_TYPE_INT64),
        Field(name="embedding", value_type=VT.VALUE_TYPE_FLOAT_LIST),
    ]
    apply_push_views(registry_address, connect, project, {"goods": ("item", fields)})
    rows = []
    for item_id, popularity, year, stock, embedding in (
        (1, 90.0, 2010, 0, [1.0, 0.0]),
        (2, 80.0, 2010, 5, [1.0, 0.0]),
        (3, 70.0, 2024, 5, [0.0, 1.0]),
        (4, 60.0, 2010, None, [1.0, 0.05]),
    ):
        values = {
            "item_id": value_pb2.Value(int64_value=item_id),
            "popularity": value_pb2.Value(double_value=popularity),
            "release_year": value_pb2.Value(int64_value=year),
            "embedding": value_pb2.Value(float_list_value=value_pb2.FloatList(values=embedding)),
        }
        if stock is not None:
            values["stock"] = value_pb2.Value(int64_value=stock)
        row = spb.FeatureRow(values=values)
        row.event_time.GetCurrentTime()
        rows.append(row)
    serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="goods", rows=rows)
    )
    return project


def ranked_after(recommend, project: str, rerank: scene_pb2.StageConfig) -> list[str]:
    """The shop's items, recalled by popularity, after `rerank`."""
    scene_id = f"{project}_{rerank.type}"
    recommend.CreateScene(
        cpb.CreateSceneRequest(
            scene_id=scene_id,
            scene=scene_pb2.Scene(
                project=project,
                user_entity="user",
                item_entity="item",
                recalls=[
                    scene_pb2.StageConfig(
                        type="popularity",
                        quota=10,
                        params=struct(feature_view="goods", feature="popularity"),
                    )
                ],
                reranks=[rerank, scene_pb2.StageConfig(type="top_n")],
                top_n=10,
            ),
        )
    )
    return [item.item_id for item in recommended(recommend, scene_id, 1).items]


def test_boost_multiplies_the_score_of_what_its_rule_matches(shop, recommend):
    rule = {"field": "goods:release_year", "op": ">=", "value": 2020}
    # Recall order scores 1, 0.75, 0.5, 0.25: item 3's 0.5 x 3 goes first.
    assert ranked_after(recommend, shop, stage("boost", rules=[rule], factor=3)) == [
        "3",
        "1",
        "2",
        "4",
    ]


def test_mmr_places_the_different_item_before_the_near_duplicates(shop, recommend):
    # lambda 0.5: after item 1, item 3 (relevance 1/3, similarity 0) beats item 2 (2/3, 1).
    assert ranked_after(
        recommend, shop, stage("mmr", feature="goods:embedding", **{"lambda": 0.5})
    ) == [
        "1",
        "3",
        "2",
        "4",
    ]


def test_stock_moves_items_without_enough_behind_the_others(shop, recommend):
    # Item 1 has none, item 4 no figure (demoted by default); each group keeps its order.
    assert ranked_after(recommend, shop, stage("stock", feature="goods:stock")) == [
        "2",
        "3",
        "1",
        "4",
    ]
