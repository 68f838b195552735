"""The recall stages `vector`, `item_to_item`, `popular` and `category_affinity` on fakes of
`ItemSource` and `UserFeatureReader`, with real faiss indexes; and the four in one pipeline."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
import pytest
from google.protobuf import struct_pb2
from recstack.recommend.v1 import scene_pb2
from recstack.registry.v1 import entity_pb2

from services.recommend.item_cache import ItemTable
from services.recommend.pipeline import (
    RECALL_SOURCES,
    BuildContext,
    StageDeps,
    StageRequest,
    StageSettings,
)
from services.recommend.recall import category_affinity, item_to_item, popular, vector
from services.recommend.recall.category_affinity import interleave, split
from services.recommend.recall.vector_index import IndexSpec, VectorIndexes
from services.recommend.stages import build_pipeline, default_stage_registry
from services.recommend.validation import validate_scene
from shared.errors import FailedPrecondition, InvalidArgument
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.values import VT

NOW = datetime(2026, 11, 23, tzinfo=UTC)
PROJECT = "shop"


def schema(name: str, **features: int) -> ViewSchema:
    return ViewSchema(
        PROJECT,
        name,
        1,
        "item_id",
        VT.VALUE_TYPE_INT64,
        tuple(Feature(n, t) for n, t in features.items()),
    )


EMBEDDINGS = schema("item_embeddings", embedding=VT.VALUE_TYPE_FLOAT_LIST)
SIMILAR = schema(
    "item_similar",
    similar_items=VT.VALUE_TYPE_INT64_LIST,
    similar_scores=VT.VALUE_TYPE_DOUBLE_LIST,
)
POPULARITY = schema("item_popularity", ratings_30d=VT.VALUE_TYPE_INT64)
ATTRIBUTES = schema("item_attributes", genres=VT.VALUE_TYPE_STRING_LIST)


def table(view: ViewSchema, rows: dict[int, dict[str, Any]], **kwargs: Any) -> ItemTable:
    keys = list(rows)
    values = {f.name: [rows[k].get(f.name) for k in keys] for f in view.features}
    loaded = ItemTable.from_scan(view, keys, ViewColumns(values, [NOW] * len(keys)), NOW)
    return replace(loaded, **kwargs) if kwargs else loaded


class Items:
    """`ItemSource` over tables set by the test (a refresh is a new table)."""

    def __init__(self, *tables: ItemTable) -> None:
        self.tables = {t.view.name: t for t in tables}

    def table(self, project, view_id):
        return self.tables[view_id]

    def swap(self, new: ItemTable) -> None:
        # A refresh is later than the table it replaces.
        old = self.tables[new.view.name]
        self.tables[new.view.name] = replace(new, loaded_at=old.loaded_at + 1)


def request(**user: Any) -> StageRequest:
    return StageRequest("home", PROJECT, "7", {}, 10, user=user, user_key=7)


def vectors(*rows: list[float] | None) -> dict[int, dict[str, Any]]:
    return {i: {"embedding": row} for i, row in enumerate(rows, start=1)}


def vector_recall(items: Items, quota: int = 10, indexes=None, **params: Any):
    settings = StageSettings(
        "vector",
        "vector",
        quota,
        {"feature_view": "item_embeddings", "feature": "embedding", **params},
    )
    vector.check(settings, "recalls[0]")
    return vector.VectorRecall(
        items,
        indexes or VectorIndexes(background=False),
        PROJECT,
        quota=quota,
        **vector._read(settings, "recall"),
    )


def error_field(check, params: dict[str, Any], quota: int = 10) -> str:
    with pytest.raises(InvalidArgument) as caught:
        check(StageSettings("t", "t", quota, params), "scene.recalls[2]")
    return caught.value.metadata["field"]


# --- vector -------------------------------------------------------------------------------


def test_vector_recall_orders_by_inner_product_with_the_user_vector():
    items = Items(table(EMBEDDINGS, vectors([1, 0], [3, 0], [0, 1], [2, 2], [-1, 0])))
    recall = vector_recall(items, quota=3, user_vector="user_towers:vector")

    assert recall.user_refs == ("user_towers:vector",)
    assert recall.recall(request(**{"user_towers:vector": [1.0, 0.0]})) == ["2", "4", "1"]


def test_a_search_on_a_new_thread_runs_on_that_thread_alone():
    """OpenMP's thread count is per calling thread: the import-time setting does not reach
    gRPC's request threads, so each searching thread sets its own."""
    items = Items(table(EMBEDDINGS, vectors([1, 0], [3, 0], [0, 1])))
    recall = vector_recall(items, quota=2, user_vector="user_towers:vector")
    seen: list[tuple[list[str], int]] = []

    def search() -> None:
        found = recall.recall(request(**{"user_towers:vector": [1.0, 0.0]}))
        seen.append((found, faiss.omp_get_max_threads()))

    thread = threading.Thread(target=search)
    thread.start()
    thread.join()

    assert seen == [(["2", "1"], 1)]


def test_cosine_ranks_by_angle_not_length():
    items = Items(table(EMBEDDINGS, vectors([10, 1], [1, 0], [0, 1])))
    user = {"user_towers:vector": [1.0, 0.0]}

    inner = vector_recall(items, user_vector="user_towers:vector")
    cosine = vector_recall(items, user_vector="user_towers:vector", metric="cosine")

    assert inner.recall(request(**user)) == ["1", "2", "3"]
    assert cosine.recall(request(**user)) == ["2", "1", "3"]


def test_a_catalogue_smaller_than_the_quota_returns_every_indexed_item():
    items = Items(table(EMBEDDINGS, vectors([1, 0], [0, 1])))
    recall = vector_recall(items, quota=500, user_vector="u:v")

    assert sorted(recall.recall(request(**{"u:v": [1.0, 1.0]}))) == ["1", "2"]


def test_items_without_a_usable_vector_are_never_recalled():
    rows = vectors([1, 0], None, [1, 0, 0], [float("nan"), 1], [0, 0], [0.5, 0.5])
    items = Items(table(EMBEDDINGS, rows))
    recall = vector_recall(items, user_vector="u:v", metric="cosine")

    # 2: no vector, 3: another length, 4: NaN, 5: zero under cosine.
    assert recall.recall(request(**{"u:v": [1.0, 0.0]})) == ["1", "6"]
    index = recall.vectors.get(PROJECT, items.tables["item_embeddings"], "embedding", recall.spec)
    assert (len(index), index.skipped, index.dimension) == (2, 4, 2)


def test_a_view_without_any_vector_recalls_nothing():
    items = Items(table(EMBEDDINGS, vectors(None, None)))

    assert vector_recall(items, user_vector="u:v").recall(request(**{"u:v": [1.0]})) == []


def test_the_user_vector_from_history_is_the_mean_of_their_items_and_excludes_them():
    items = Items(table(EMBEDDINGS, vectors([1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4])))
    recall = vector_recall(
        items, user_history="user_history:recent_items", metric="cosine", history_length=1
    )

    # Only the newest item (1) makes the vector; the whole history (1, 2) is left out.
    found = recall.recall(request(**{"user_history:recent_items": [1, 2, 99]}))

    assert found == ["3", "5", "4"]


def test_unknown_users_and_histories_without_vectors_get_nothing():
    items = Items(table(EMBEDDINGS, vectors([1, 0], None)))
    by_history = vector_recall(items, user_history="h:items")
    by_vector = vector_recall(items, user_vector="u:v", metric="cosine")

    assert by_history.recall(request(**{"h:items": None})) == []
    assert by_history.recall(request(**{"h:items": [2, 42]})) == []
    assert by_vector.recall(request(**{"u:v": None})) == []
    assert by_vector.recall(request(**{"u:v": [0.0, 0.0]})) == []


def test_a_user_vector_of_another_dimension_is_failed_precondition():
    items = Items(table(EMBEDDINGS, vectors([1, 0])))
    recall = vector_recall(items, user_vector="u:v")

    with pytest.raises(FailedPrecondition, match=r"u:v has 3 dimensions.*has 2") as caught:
        recall.recall(request(**{"u:v": [1.0, 0.0, 0.0]}))
    assert caught.value.reason == "EMBEDDING_DIMENSION_MISMATCH"


def test_a_feature_that_is_no_vector_is_failed_precondition():
    items = Items(table(POPULARITY, {1: {"ratings_30d": 3}}))
    recall = vector_recall(items, user_vector="u:v", feature_view="item_popularity")
    recall = replace(recall, feature="ratings_30d")

    with pytest.raises(FailedPrecondition, match="ratings_30d is VALUE_TYPE_INT64"):
        recall.recall(request(**{"u:v": [1.0]}))


@pytest.fixture(scope="module")
def random_catalogue():
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((3000, 16)).astype(np.float32)
    users = rng.standard_normal((20, 16)).astype(np.float32)
    return Items(table(EMBEDDINGS, vectors(*matrix.tolist()))), users


@pytest.mark.parametrize(
    ("params", "least_overlap"),
    [
        ({"index": "ivf", "nlist": 16, "nprobe": 16}, 1.0),
        ({"index": "ivf", "nlist": 32, "nprobe": 8}, 0.7),
        ({"index": "hnsw", "ef_search": 200}, 0.9),
    ],
)
def test_approximate_indexes_find_what_the_exact_search_finds(
    random_catalogue, params, least_overlap
):
    items, users = random_catalogue
    exact = vector_recall(items, quota=50, user_vector="u:v")
    approximate = vector_recall(items, quota=50, user_vector="u:v", **params)

    overlaps = []
    for user in users:
        wanted = exact.recall(request(**{"u:v": user.tolist()}))
        found = approximate.recall(request(**{"u:v": user.tolist()}))
        assert len(set(found)) == len(found) <= 50
        overlaps.append(len(set(wanted) & set(found)) / 50)
    assert np.mean(overlaps) >= least_overlap


def test_an_index_that_finds_fewer_than_asked_returns_what_it_found(random_catalogue):
    items, users = random_catalogue
    # One list of ~94 visited: far fewer than 500 items, and never a padding id.
    recall = vector_recall(items, quota=500, user_vector="u:v", index="ivf", nlist=32, nprobe=1)

    found = recall.recall(request(**{"u:v": users[0].tolist()}))

    assert 0 < len(found) < 500
    assert all(item.isdigit() and 1 <= int(item) <= 3000 for item in found)


def test_a_tiny_catalogue_configured_as_ivf_is_held_flat():
    items = Items(table(EMBEDDINGS, vectors([1, 0], [0, 1])))
    recall = vector_recall(items, user_vector="u:v", index="ivf")

    assert recall.recall(request(**{"u:v": [0.0, 1.0]})) == ["2", "1"]


# --- vector: keeping the index current ---------------------------------------------------------


def refreshed(old: ItemTable, changes: dict[int, list[float] | None], drop=()) -> ItemTable:
    """An incremental refresh of `old`: unchanged rows keep their objects, as a real one does."""
    keys = [int(i) for i in old.item_ids if int(i) not in drop]
    column = old.columns["embedding"]
    values = [column[old.rows([str(k)])[0]] for k in keys]
    for key, value in changes.items():
        if key in keys:
            values[keys.index(key)] = value
        else:
            keys.append(key)
            values.append(value)
    new = table(EMBEDDINGS, {k: {"embedding": v} for k, v in zip(keys, values, strict=True)})
    object_column = np.empty(len(values), dtype=object)
    object_column[:] = values
    changed = frozenset(str(k) for k in [*changes, *drop])
    return replace(new, columns={"embedding": object_column}, changed=changed)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_an_incremental_refresh_updates_the_index_in_place_of_a_rebuild(index):
    rows = vectors(*([1.0, float(i)] for i in range(100)))
    items = Items(table(EMBEDDINGS, rows))
    indexes = VectorIndexes(background=False)
    recall = vector_recall(items, quota=3, indexes=indexes, user_vector="u:v", index=index)
    user = request(**{"u:v": [0.0, 1.0]})
    assert recall.recall(user) == ["100", "99", "98"]

    items.swap(refreshed(items.tables["item_embeddings"], {5: [0.0, 500.0], 101: [0, 400]}, [99]))
    found = recall.recall(user)

    assert found == ["5", "101", "100"]
    current = indexes.get(PROJECT, items.tables["item_embeddings"], "embedding", recall.spec)
    # Updated, not rebuilt: the labels of the removed and re-added rows stay retired.
    assert len(current.names) == 102 and len(current) == 100


def test_an_index_that_missed_a_refresh_still_ends_up_exact():
    items = Items(table(EMBEDDINGS, vectors(*([1.0, float(i)] for i in range(10)))))
    recall = vector_recall(items, quota=2, user_vector="u:v")
    user = request(**{"u:v": [0.0, 1.0]})
    assert recall.recall(user) == ["10", "9"]

    # Item 3 changes in a refresh no search sees; the next refresh only changes item 4.
    items.swap(refreshed(items.tables["item_embeddings"], {3: [0.0, 100.0]}))
    items.swap(refreshed(items.tables["item_embeddings"], {4: [0.0, 50.0]}))

    assert recall.recall(user) == ["3", "4"]


def test_hnsw_is_rebuilt_on_refresh():
    items = Items(table(EMBEDDINGS, vectors(*([1.0, float(i)] for i in range(20)))))
    indexes = VectorIndexes(background=False)
    recall = vector_recall(items, quota=1, indexes=indexes, user_vector="u:v", index="hnsw")
    items.swap(refreshed(items.tables["item_embeddings"], {2: [0.0, 99.0]}))

    assert recall.recall(request(**{"u:v": [0.0, 1.0]})) == ["2"]
    current = indexes.get(PROJECT, items.tables["item_embeddings"], "embedding", recall.spec)
    assert len(current.names) == 20


def test_in_the_background_searches_use_the_previous_index_without_dropped_items():
    items = Items(table(EMBEDDINGS, vectors(*([1.0, float(i)] for i in range(10)))))
    indexes = VectorIndexes(background=True)
    recall = vector_recall(items, quota=2, indexes=indexes, user_vector="u:v")
    user = request(**{"u:v": [0.0, 1.0]})
    assert recall.recall(user) == ["10", "9"]
    first = indexes.get(PROJECT, items.tables["item_embeddings"], "embedding", recall.spec)

    items.swap(refreshed(first.table, {}, drop=[10]))
    during = recall.recall(user)
    deadline = time.monotonic() + 5
    while (
        indexes.get(PROJECT, items.tables["item_embeddings"], "embedding", recall.spec).table
        is not items.tables["item_embeddings"]
    ):
        assert time.monotonic() < deadline, "the index was not updated in the background"
        time.sleep(0.01)

    assert "10" not in during
    assert recall.recall(user) == ["9", "8"]


def test_an_older_table_never_replaces_a_newer_index():
    items = Items(table(EMBEDDINGS, vectors([1, 0])))
    old = items.tables["item_embeddings"]
    indexes = VectorIndexes(background=False)
    spec = IndexSpec()
    items.swap(refreshed(old, {2: [0, 1]}))
    newer = indexes.get(PROJECT, items.tables["item_embeddings"], "embedding", spec)

    assert indexes.get(PROJECT, old, "embedding", spec) is newer


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"feature": "e", "user_vector": "u:v"}, "scene.recalls[2].params.feature_view"),
        ({"feature_view": "v", "user_vector": "u:v"}, "scene.recalls[2].params.feature"),
        ({"feature_view": "v", "feature": "e"}, "scene.recalls[2].params"),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "user_history": "h:i"},
            "scene.recalls[2].params",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "v"},
            "scene.recalls[2].params.user_vector",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "index": "annoy"},
            "scene.recalls[2].params.index",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "metric": "l2"},
            "scene.recalls[2].params.metric",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "nprobe": 1.5},
            "scene.recalls[2].params.nprobe",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "hnsw_m": 1000},
            "scene.recalls[2].params.hnsw_m",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "history_length": 5},
            "scene.recalls[2].params.history_length",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_history": "h:i", "history_length": 0},
            "scene.recalls[2].params.history_length",
        ),
        (
            {"feature_view": "v", "feature": "e", "user_vector": "u:v", "k": 1},
            "scene.recalls[2].params",
        ),
    ],
)
def test_vector_params_are_checked_at_save(params, field):
    assert error_field(vector.check, params) == field


# --- item_to_item -------------------------------------------------------------------------------

SIMILAR_ROWS = {
    1: {"similar_items": [2, 3, 4], "similar_scores": [0.9, 0.5, 0.1]},
    2: {"similar_items": [1, 3, 5], "similar_scores": [0.9, 0.6, 0.2]},
    3: {"similar_items": [6], "similar_scores": None},
    4: {"similar_items": None, "similar_scores": None},
}


def i2i(quota: int = 10, **params: Any) -> item_to_item.ItemToItemRecall:
    settings = StageSettings(
        "item_to_item",
        "i2i",
        quota,
        {"feature_view": "item_similar", "user_history": "user_history:recent_items", **params},
    )
    item_to_item.check(settings, "recalls[0]")
    items = Items(table(SIMILAR, SIMILAR_ROWS))
    return item_to_item.ItemToItemRecall(
        items, PROJECT, quota, **item_to_item._read(settings, "recall")
    )


def history(*items: int) -> StageRequest:
    return request(**{"user_history:recent_items": list(items)})


def test_item_to_item_sums_similarities_over_the_history_and_leaves_the_history_out():
    recall = i2i()

    # From 1: 3 (0.5), 4 (0.1); from 2: 3 (0.6), 5 (0.2). 1 and 2 are the history.
    assert recall.user_refs == ("user_history:recent_items",)
    assert recall.recall(history(1, 2)) == ["3", "5", "4"]


def test_recency_decay_weighs_newer_history_items_more():
    # 2 is newest: 5 gets 0.2, 4 gets 0.1 * 0.1; without decay 3 wins at 1.1 either way.
    assert i2i(recency_decay=0.1).recall(history(2, 1)) == ["3", "5", "4"]
    assert i2i(recency_decay=0.1).recall(history(1, 2)) == ["3", "4", "5"]


def test_item_to_item_quota_lists_without_scores_and_cold_items():
    assert i2i(quota=1).recall(history(1, 2)) == ["3"]
    # 3's list has no scores: each of its items counts 1.
    assert i2i().recall(history(3)) == ["6"]
    # 4 lists nothing and 42 is not in the view.
    assert i2i().recall(history(4, 42)) == []
    assert i2i().recall(request(**{"user_history:recent_items": None})) == []
    assert i2i(history_length=1).recall(history(4, 1)) == []


@pytest.mark.parametrize("seed", range(10))
def test_item_to_item_matches_its_definition_with_ties_and_a_quota(seed):
    rng = np.random.default_rng(seed)
    # Without decay, scores on a coarse grid so that totals tie often; with it, finely spread.
    # Ids cross digit counts (9 < 10).
    rows = {
        item: {
            "similar_items": rng.choice(40, int(rng.integers(0, 12)), replace=False).tolist(),
            "similar_scores": None,
        }
        for item in range(1, 30)
    }
    for row in rows.values():
        grid = 4 if seed % 2 == 0 else 1000
        row["similar_scores"] = (rng.integers(1, grid, len(row["similar_items"])) / grid).tolist()
    quota, decay = int(rng.integers(1, 25)), [1.0, 0.5][seed % 2]
    settings = StageSettings(
        "item_to_item", "i2i", quota,
        {"feature_view": "item_similar", "user_history": "user_history:recent_items",
         "recency_decay": decay},
    )  # fmt: skip
    recall = item_to_item.ItemToItemRecall(
        Items(table(SIMILAR, rows)), PROJECT, quota, **item_to_item._read(settings, "recall")
    )
    recent = rng.choice(45, 8, replace=False).tolist()

    totals: dict[str, float] = {}
    for age, item in enumerate(recent):  # the i-th newest weighs decay^i, listed or not
        similar = rows.get(item, {"similar_items": [], "similar_scores": []})
        for other, score in zip(*similar.values(), strict=True):
            totals[str(other)] = totals.get(str(other), 0.0) + score * decay**age
    for item in recent:
        totals.pop(str(item), None)
    expected = sorted(totals, key=lambda item: (-totals[item], item))[:quota]

    assert recall.recall(history(*recent)) == expected


def test_item_to_item_with_features_of_the_wrong_type_is_failed_precondition():
    with pytest.raises(
        FailedPrecondition,
        match="similar_items is VALUE_TYPE_INT64_LIST; item_to_item needs ARRAY<DOUBLE>",
    ):
        i2i(scores_feature="similar_items").recall(history(1))
    with pytest.raises(FailedPrecondition, match="has no feature 'neighbours'"):
        i2i(items_feature="neighbours").recall(history(1))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"user_history": "h:i"}, "scene.recalls[2].params.feature_view"),
        ({"feature_view": "s"}, "scene.recalls[2].params.user_history"),
        (
            {"feature_view": "s", "user_history": "h:i", "recency_decay": 0},
            "scene.recalls[2].params.recency_decay",
        ),
        (
            {"feature_view": "s", "user_history": "h:i", "recency_decay": 1.5},
            "scene.recalls[2].params.recency_decay",
        ),
        (
            {"feature_view": "s", "user_history": "h:i", "history_length": 2000},
            "scene.recalls[2].params.history_length",
        ),
        ({"feature_view": "s", "user_history": "h:i", "top_k": 3}, "scene.recalls[2].params"),
    ],
)
def test_item_to_item_params_are_checked_at_save(params, field):
    assert error_field(item_to_item.check, params) == field


# --- popular and category_affinity ----------------------------------------------------------

POPULARITY_ROWS = {
    1: {"ratings_30d": 50},
    2: {"ratings_30d": 40},
    3: {"ratings_30d": 40},
    4: {"ratings_30d": 30},
    5: {"ratings_30d": 20},
    6: {"ratings_30d": None},
    7: {"ratings_30d": 10},
}
GENRES = {
    1: {"genres": ["Comedy"]},
    2: {"genres": ["Drama", "Comedy"]},
    3: {"genres": ["Action"]},
    4: {"genres": ["Comedy", "Romance"]},
    5: {"genres": ["Drama"]},
    6: {"genres": ["Drama"]},
    7: {"genres": None},
}


def catalogue() -> Items:
    return Items(table(POPULARITY, POPULARITY_ROWS), table(ATTRIBUTES, GENRES))


def popular_recall(quota: int = 10, **params: Any) -> popular.PopularRecall:
    settings = StageSettings(
        "popular",
        "popular",
        quota,
        {"feature_view": "item_popularity", "feature": "ratings_30d", **params},
    )
    popular.check(settings, "recalls[0]")
    scene = scene_pb2.Scene(project=PROJECT)
    deps = StageDeps(catalogue(), None, None, None)  # type: ignore[arg-type]
    return popular.build(settings, BuildContext("home", scene, deps))


def with_context(**context: Any) -> StageRequest:
    return StageRequest("home", PROJECT, "7", context, 10)


def test_popular_overall_ranks_by_the_feature_ties_by_id_and_skips_missing():
    assert popular_recall().recall(with_context()) == ["1", "2", "3", "4", "5", "7"]
    assert popular_recall(quota=2).recall(with_context()) == ["1", "2"]


def test_popular_in_a_fixed_or_requested_category():
    by_value = popular_recall(category="item_attributes:genres", category_value="Comedy")
    by_context = popular_recall(category="item_attributes:genres", category_context_key="genre")

    assert by_value.recall(with_context()) == ["1", "2", "4"]
    assert by_context.recall(with_context(genre="Drama")) == ["2", "5"]
    assert by_context.recall(with_context(genre="Western")) == []
    # Without the context entry: the overall ranking.
    assert by_context.recall(with_context()) == ["1", "2", "3", "4", "5", "7"]
    with pytest.raises(InvalidArgument, match=r"context\.genre: must be a STRING"):
        by_context.recall(with_context(genre=["Drama"]))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"feature": "n"}, "scene.recalls[2].params.feature_view"),
        ({"feature_view": "p"}, "scene.recalls[2].params.feature"),
        (
            {"feature_view": "p", "feature": "n", "category_value": "x"},
            "scene.recalls[2].params.category_value",
        ),
        ({"feature_view": "p", "feature": "n", "category": "a:g"}, "scene.recalls[2].params"),
        (
            {"feature_view": "p", "feature": "n", "category": "a:g", "category_value": ""},
            "scene.recalls[2].params.category_value",
        ),
        (
            {"feature_view": "p", "feature": "n", "category": "genres", "category_value": "x"},
            "scene.recalls[2].params.category",
        ),
    ],
)
def test_popular_params_are_checked_at_save(params, field):
    assert error_field(popular.check, params) == field


def affinity(quota: int = 10, **params: Any) -> category_affinity.CategoryAffinityRecall:
    settings = StageSettings(
        "category_affinity",
        "affinity",
        quota,
        {
            "user_categories": "user_history:genre_counts",
            "feature_view": "item_popularity",
            "feature": "ratings_30d",
            "category": "item_attributes:genres",
            **params,
        },
    )
    category_affinity.check(settings, "recalls[0]")
    scene = scene_pb2.Scene(project=PROJECT)
    deps = StageDeps(catalogue(), None, None, None)  # type: ignore[arg-type]
    return category_affinity.build(settings, BuildContext("home", scene, deps))


def genre_counts(**counts: float) -> StageRequest:
    return request(**{"user_history:genre_counts": counts})


def test_category_affinity_splits_the_quota_by_weight_over_the_top_categories():
    recall = affinity(quota=3, top_categories=2)

    # Comedy (2 of 3) then Drama (1 of 3), interleaved; Action is not in the top 2.
    found = recall.recall(genre_counts(Comedy=10, Drama=5, Action=4))

    assert recall.user_refs == ("user_history:genre_counts",)
    assert found == ["1", "2", "4"]


def test_an_item_in_two_favourite_categories_is_taken_once():
    # Shares 2 and 2; Drama's top item (2) is Comedy's second, so Drama takes 5 after it.
    found = affinity(quota=4).recall(genre_counts(Comedy=4, Drama=4, Action=0.5))

    assert found == ["1", "2", "4", "5"]


def test_a_category_that_runs_out_leaves_its_share_to_the_others():
    # Action's share is 4 of 6 but it holds one item (3); Comedy and Drama fill after their
    # one each, until they run out too.
    found = affinity(quota=6).recall(genre_counts(Action=4, Comedy=1, Drama=1))

    assert found == ["3", "1", "2", "4", "5"]


def test_a_catalogue_smaller_than_the_quota_yields_every_item_of_the_categories():
    found = affinity(quota=100).recall(genre_counts(Comedy=1, Drama=1))

    assert sorted(found) == ["1", "2", "4", "5"]


def test_category_affinity_for_unknown_users_and_useless_weights():
    recall = affinity()

    assert recall.recall(request(**{"user_history:genre_counts": None})) == []
    assert recall.recall(genre_counts(Comedy=0, Western=3)) == []
    with pytest.raises(FailedPrecondition, match="not a map"):
        recall.recall(request(**{"user_history:genre_counts": [1, 2]}))


def test_split_is_proportional_with_the_largest_remainders():
    assert split(10, [6, 3, 1]) == [6, 3, 1]
    assert split(10, [1, 1, 1]) == [4, 3, 3]
    assert split(1, [1, 5]) == [0, 1]
    assert sum(split(500, [3.3, 2.2, 1.1, 0.4])) == 500


def test_interleave_takes_shares_round_robin_then_fills():
    assert interleave([["a", "b", "c"], ["x", "y"]], [2, 1], 3) == ["a", "x", "b"]
    assert interleave([["a"], ["a", "x", "y"]], [2, 1], 3) == ["a", "x", "y"]
    assert interleave([["a", "b"], []], [1, 2], 5) == ["a", "b"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            {"feature_view": "p", "feature": "n", "category": "a:g"},
            "scene.recalls[2].params.user_categories",
        ),
        (
            {"user_categories": "u:c", "feature_view": "p", "feature": "n"},
            "scene.recalls[2].params.category",
        ),
        (
            {
                "user_categories": "u:c",
                "feature_view": "p",
                "feature": "n",
                "category": "a:g",
                "top_categories": 0,
            },
            "scene.recalls[2].params.top_categories",
        ),
    ],
)
def test_category_affinity_params_are_checked_at_save(params, field):
    assert error_field(category_affinity.check, params) == field


# --- every recall in one scene ------------------------------------------------------------


class Users:
    def __init__(self, values: dict[int, dict[str, Any]]) -> None:
        self.values = values
        self.calls = 0

    def read(self, project, refs, key, key_type):
        self.calls += 1
        known = self.values.get(key, {})
        return {ref: known.get(ref) for ref in refs}


class Definitions:
    def entity(self, project, entity_id):
        return entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64)


def struct(**values: Any) -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    params.update(values)
    return params


def all_recalls_scene() -> scene_pb2.Scene:
    stage = scene_pb2.StageConfig
    history_ref = "user_history:recent_items"
    return scene_pb2.Scene(
        project=PROJECT,
        user_entity="user",
        item_entity="item",
        recalls=[
            stage(
                type="vector",
                quota=2,
                params=struct(
                    feature_view="item_embeddings", feature="embedding", user_history=history_ref
                ),
            ),
            stage(
                type="item_to_item",
                quota=2,
                params=struct(feature_view="item_similar", user_history=history_ref),
            ),
            stage(
                type="category_affinity",
                quota=2,
                params=struct(
                    user_categories="user_history:genre_counts",
                    feature_view="item_popularity",
                    feature="ratings_30d",
                    category="item_attributes:genres",
                ),
            ),
            stage(
                type="popular",
                quota=2,
                params=struct(feature_view="item_popularity", feature="ratings_30d"),
            ),
        ],
        rank=scene_pb2.RankConfig(),
        top_n=10,
    )


def test_a_scene_with_every_recall_reads_the_user_once_and_lists_each_source():
    embeddings = table(EMBEDDINGS, vectors([1, 0], [0, 1], [1, 0.1], [0.2, 1], [0.9, 0], [0, 0]))
    items = Items(
        embeddings,
        table(SIMILAR, SIMILAR_ROWS),
        table(POPULARITY, POPULARITY_ROWS),
        table(ATTRIBUTES, GENRES),
    )
    users = Users(
        {
            7: {
                "user_history:recent_items": [1],
                "user_history:genre_counts": {"Drama": 3.0},
            }
        }
    )
    deps = StageDeps(items, users, None, Definitions(), vectors=VectorIndexes(background=False))  # type: ignore[arg-type]
    scene = all_recalls_scene()
    validate_scene(scene, default_stage_registry())
    pipeline = build_pipeline("home", scene, default_stage_registry(), deps)

    known = pipeline.run(StageRequest("home", PROJECT, "7", {}, 10))
    unknown = pipeline.run(StageRequest("home", PROJECT, "8", {}, 10))

    sources = dict(
        zip(
            known.candidates.item_ids.tolist(),
            known.candidates.columns[RECALL_SOURCES],
            strict=True,
        )
    )
    # vector: 3, 5 (nearest to item 1); item_to_item: 2, 3; affinity (Drama): 2, 5;
    # popular: 1, 2.
    assert sources == {
        "3": ("vector", "item_to_item"),
        "5": ("vector", "category_affinity"),
        "2": ("item_to_item", "category_affinity", "popular"),
        "1": ("popular",),
    }
    assert users.calls == 2
    assert [known.stage_counts[n] for n in ("vector", "item_to_item", "category_affinity")] == [
        2,
        2,
        2,
    ]
    # A user no view knows: the personal recalls find nothing, popular still answers.
    assert unknown.candidates.item_ids.tolist() == ["1", "2"]
    assert [unknown.stage_counts[n] for n in ("vector", "item_to_item", "category_affinity")] == [
        0,
        0,
        0,
    ]


def test_a_first_hnsw_index_is_built_in_the_background_and_finds_nothing_until_then():
    items = Items(table(EMBEDDINGS, vectors(*([1.0, float(i)] for i in range(50)))))
    indexes = VectorIndexes(background=True)
    recall = vector_recall(items, quota=1, indexes=indexes, user_vector="u:v", index="hnsw")
    user = request(**{"u:v": [0.0, 1.0]})

    first = recall.recall(user)
    deadline = time.monotonic() + 10
    while not (found := recall.recall(user)):
        assert time.monotonic() < deadline, "the HNSW index was never built"
        time.sleep(0.01)

    assert first == []
    assert found == ["50"]


def test_the_least_recently_used_index_is_dropped_beyond_the_limit():
    current = table(EMBEDDINGS, vectors([1, 0], [0, 1]))
    indexes = VectorIndexes(background=False, max_indexes=1)
    flat, cosine = IndexSpec(), IndexSpec(metric="cosine")

    kept = indexes.get(PROJECT, current, "embedding", flat)
    assert indexes.get(PROJECT, current, "embedding", flat) is kept
    indexes.get(PROJECT, current, "embedding", cosine)

    assert indexes.get(PROJECT, current, "embedding", flat) is not kept
