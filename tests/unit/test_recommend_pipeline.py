"""Stages, the item cache, the pipeline and the Recommender, on fakes of their Protocols."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import pytest
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY
from recstack.recommend.v1 import experiment_pb2, scene_pb2
from recstack.registry.v1 import entity_pb2, feature_view_pb2

from services.recommend.breaker import ModelBreaker
from services.recommend.catalog import (
    EXPERIMENT,
    SCENE,
    Catalog,
    ServedScenes,
)
from services.recommend.filter.exclude_items import ExcludeItems
from services.recommend.item_cache import ItemCache
from services.recommend.pipeline import (
    ActiveModel,
    Candidates,
    StageDeps,
    StageRequest,
    by_score,
)
from services.recommend.recall.popularity import PopularityRecall
from services.recommend.recommender import Recommender, RecommendQuery, ScoreQuery
from services.recommend.references import check_references
from services.recommend.rerank.top_n import TopN
from services.recommend.stages import PipelineCache, build_pipeline, default_stage_registry
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shared.feature_generator import stable_hash
from shared.feature_views import Feature, ViewSchema
from shared.online_store import Scan, ViewColumns
from shared.values import VT
from tests.fakes.model_server import FakeModel, InMemoryModelServer
from tests.fakes.recommend import MemoryRepository

NOW = datetime(2026, 11, 23, tzinfo=UTC)
PROJECT = "shop"

# --- fakes ----------------------------------------------------------------------------------


def schema(name: str, join_key: str, **features: int) -> ViewSchema:
    return ViewSchema(
        PROJECT,
        name,
        1,
        join_key,
        VT.VALUE_TYPE_INT64,
        tuple(Feature(n, t) for n, t in features.items()),
    )


USER_PROFILE = schema(
    "user_profile", "user_id", age=VT.VALUE_TYPE_INT64, activity=VT.VALUE_TYPE_DOUBLE
)
ITEM_STATS = schema(
    "item_stats",
    "item_id",
    popularity=VT.VALUE_TYPE_DOUBLE,
    price=VT.VALUE_TYPE_FLOAT,
    title=VT.VALUE_TYPE_STRING,
)
# Item 4 has no popularity; 1 and 3 tie.
ITEM_ROWS = {
    "popularity": [5.0, 3.0, 5.0, None, 1.0, 4.0],
    "price": [10.0, 20.0, 30.0, 40.0, 50.0, None],
    "title": ["a", "b", "c", "d", "e", "f"],
}


class FakeDefinitions:
    def __init__(self) -> None:
        self.views = {"user_profile": ("user", USER_PROFILE), "item_stats": ("item", ITEM_STATS)}
        self.entities = {
            "user": entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
            "item": entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
        }
        # model id → its ACTIVE version
        self.models: dict[str, ActiveModel] = {}

    def model(self, project, model_id):
        if model_id not in self.models:
            raise NotFound(f"projects/{project}/models/{model_id} does not exist")
        return self.models[model_id]

    def active_model(self, project, model_id):
        if model_id not in self.models:
            raise NotFound(f"projects/{project}/models/{model_id} has no ACTIVE version")
        return self.models[model_id]

    def feature_view(self, project, view_id, version=0):
        if view_id not in self.views:
            raise NotFound(f"projects/{project}/featureViews/{view_id} does not exist")
        return feature_view_pb2.FeatureView(name=view_id, entity=self.views[view_id][0])

    def view_schema(self, project, view_id, version=0):
        self.feature_view(project, view_id)
        return self.views[view_id][1]

    def entity(self, project, entity_id):
        return self.entities[entity_id]


class FakeStore:
    """`OnlineStore.scan` over in-memory rows; `fail` makes the next scans raise."""

    def __init__(self) -> None:
        self.rows = {"item_stats": ([1, 2, 3, 4, 5, 6], dict(ITEM_ROWS), [NOW] * 6)}
        # When each row was written (default: NOW); incremental scans read newer rows.
        self.written: dict[str, list[datetime]] = {}
        # The store's clock at a scan.
        self.now = NOW
        self.scans = 0
        self.reads: list[list] = []
        self.fail = False

    def scan_since(self, view, features, since):
        self.scans += 1
        if self.fail:
            raise Unavailable("online store down")
        keys, values, times = self.rows[view.name]
        written = self.written.get(view.name, [NOW] * len(keys))
        chosen = [i for i, w in enumerate(written) if since is None or w > since]
        columns = ViewColumns(
            {f: [values[f][i] for i in chosen] for f in features}, [times[i] for i in chosen]
        )
        return Scan([keys[i] for i in chosen], columns, self.now)

    def read(self, requests, keys):
        self.reads.append(list(keys))
        [(view, features)] = requests
        stored_keys, values, times = self.rows[view.name]
        position = {k: i for i, k in enumerate(stored_keys)}
        found = [position.get(k) for k in keys]
        return [
            ViewColumns(
                {f: [None if i is None else values[f][i] for i in found] for f in features},
                [None if i is None else times[i] for i in found],
            )
        ]


class FakeModelServer(InMemoryModelServer):
    """The contract-tested in-memory model server with one model, `ranker`, scoring each item
    as the dot product of its features with `weights`; it records calls, and `error` makes
    them fail."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        linear = FakeModel(
            {"features": (np.dtype(np.float32), (len(self.weights),))},
            {"probs_ctr": lambda inputs: (inputs["features"] @ self.weights).reshape(-1, 1)},
        )
        super().__init__({"ranker": linear})
        self.calls: list[tuple[str, np.ndarray, list[str], str]] = []
        self.error: Exception | None = None

    def infer(self, model, inputs, outputs, *, version=""):
        self.calls.append((model, inputs["features"], list(outputs), version))
        if self.error is not None:
            raise self.error
        return super().infer(model, inputs, outputs, version=version)


class FakeUserFeatures:
    def __init__(self, values: dict) -> None:
        self.values = values
        self.calls: list[tuple] = []

    def read(self, project, refs, key, key_type):
        self.calls.append((project, tuple(refs), key, key_type))
        return {ref: self.values.get(ref) for ref in refs}


# --- fixtures -------------------------------------------------------------------------------


class World:
    def __init__(self) -> None:
        self.definitions = FakeDefinitions()
        self.store = FakeStore()
        self.cache = ItemCache(
            self.store, self.definitions, incremental_seconds=3600, clock=lambda: NOW
        )
        self.model = FakeModelServer([0.0, 1.0, 0.0, 0.0])
        self.users = FakeUserFeatures({"user_profile:age": 30, "user_profile:activity": None})
        self.deps = StageDeps(self.cache, self.users, self.model, self.definitions)
        self.stages = default_stage_registry()
        repository = MemoryRepository()
        self.catalog = Catalog(repository.unit_of_work, self.stages, clock=lambda: NOW)
        self.recommender = Recommender(self.catalog, PipelineCache(self.stages, self.deps))


@pytest.fixture
def world() -> World:
    return World()


def params(**values) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def popularity(name: str, feature: str, quota: int) -> scene_pb2.StageConfig:
    return scene_pb2.StageConfig(
        type="popularity",
        name=name,
        quota=quota,
        params=params(feature_view="item_stats", feature=feature),
    )


def make_scene(**changes) -> scene_pb2.Scene:
    scene = scene_pb2.Scene(
        project=PROJECT,
        user_entity="user",
        item_entity="item",
        recalls=[popularity("popular", "popularity", 3), popularity("pricey", "price", 2)],
        filters=[scene_pb2.StageConfig(type="exclude_items")],
        rank=scene_pb2.RankConfig(
            model_name="ranker",
            features=[
                "user_profile:age",
                "item_stats:price",
                "user_profile:activity",
                "item_stats:popularity",
            ],
            score_output="probs_ctr",
        ),
        reranks=[scene_pb2.StageConfig(type="top_n")],
        top_n=10,
    )
    for field, value in changes.items():
        if isinstance(value, scene_pb2.RankConfig):
            scene.rank.CopyFrom(value)
        else:
            setattr(scene, field, value)
    return scene


def request(size: int = 10, **context) -> StageRequest:
    return StageRequest("home", PROJECT, "7", context, size)


# --- item cache -----------------------------------------------------------------------------


def test_item_table_is_columnar_with_missing_values(world):
    table = world.cache.table(PROJECT, "item_stats")
    rows = table.rows(["3", "99", "4"])

    np.testing.assert_array_equal(rows, [2, -1, 3])
    assert table.columns["popularity"].dtype == np.float64
    np.testing.assert_array_equal(table.column("popularity", rows), [5.0, np.nan, np.nan])
    assert table.column("title", rows).tolist() == ["c", None, "d"]


def test_item_cache_loads_a_view_once_then_serves_from_memory(world):
    world.cache.table(PROJECT, "item_stats")
    world.cache.table(PROJECT, "item_stats")

    assert world.store.scans == 1


def test_refresh_swaps_in_new_rows_and_keeps_the_old_table_on_failure(world):
    before = world.cache.table(PROJECT, "item_stats")
    keys, values, times = world.store.rows["item_stats"]
    world.store.rows["item_stats"] = (
        [*keys, 7],
        {k: [*v, v[0]] for k, v in values.items()},
        [*times, NOW],
    )

    world.cache.refresh()
    after = world.cache.table(PROJECT, "item_stats")
    world.store.fail = True
    world.cache.refresh()

    assert len(before) == 6
    assert len(after) == 7
    assert world.cache.table(PROJECT, "item_stats") is after


def test_an_incremental_refresh_merges_only_the_rows_written_since_the_last(world):
    old = NOW - timedelta(hours=1)
    world.store.written["item_stats"] = [old] * 6
    first = world.cache.table(PROJECT, "item_stats")
    world.store.now = NOW + timedelta(minutes=1)
    keys, values, times = world.store.rows["item_stats"]
    values = {k: list(v) for k, v in values.items()}
    values["popularity"][1] = 99.0  # item 2 was rewritten ...
    world.store.rows["item_stats"] = (
        [*keys, 7],
        {k: [*v, v[0]] for k, v in values.items()},
        [*times, NOW],
    )
    # ... and 7 is new: both written after the first scan (at NOW, less the 10 s overlap).
    world.store.written["item_stats"] = [old, NOW, old, old, old, old, NOW]

    world.cache.refresh()
    second = world.cache.table(PROJECT, "item_stats")
    world.cache.refresh()

    assert second.changed == {"2", "7"}
    assert second.column("popularity", second.rows(["2", "7", "1"])).tolist() == [99.0, 5.0, 5.0]
    assert first.changed is None  # a full load
    assert world.cache.table(PROJECT, "item_stats") is second  # nothing newer: kept as is


def test_a_full_refresh_drops_rows_the_store_no_longer_has(world):
    world.cache.table(PROJECT, "item_stats")
    keys, values, times = world.store.rows["item_stats"]
    world.store.rows["item_stats"] = (keys[1:], {k: v[1:] for k, v in values.items()}, times[1:])

    world.cache.refresh(full=True)

    assert world.cache.table(PROJECT, "item_stats").rows(["1"]).tolist() == [-1]


def test_a_cold_item_is_read_from_the_store_once_and_a_missing_one_is_remembered(world):
    world.cache.table(PROJECT, "item_stats")
    keys, values, times = world.store.rows["item_stats"]
    world.store.rows["item_stats"] = (
        [*keys, 8],
        {k: [*v, v[2]] for k, v in values.items()},
        [*times, NOW],
    )

    popularity = world.cache.values(PROJECT, "item_stats", "popularity", ["8", "1", "404"])
    again = world.cache.values(PROJECT, "item_stats", "popularity", ["8", "404"])

    assert popularity[:2].tolist() == [5.0, 5.0] and np.isnan(popularity[2])
    assert np.isnan(again[1])
    assert world.store.reads == [[8, 404]]  # 8 is cached now, 404 known to be absent
    assert world.cache.table(PROJECT, "item_stats").changed == {"8"}


def test_rows_older_than_the_view_ttl_are_missing(world):
    world.definitions.views["item_stats"] = ("item", replace(ITEM_STATS, ttl_seconds=60))
    _, _, times = world.store.rows["item_stats"]
    times[0] = NOW - timedelta(hours=1)

    table = world.cache.table(PROJECT, "item_stats")

    assert np.isnan(table.columns["popularity"][0])
    assert table.columns["popularity"][1] == 3.0


# --- stages ---------------------------------------------------------------------------------


def test_popularity_recall_takes_the_top_quota_ties_by_id(world):
    recall = PopularityRecall(world.cache, PROJECT, "item_stats", "popularity", 3)

    assert recall.recall(request()) == ["1", "3", "6"]


def test_popularity_recall_never_returns_items_without_a_value(world):
    recall = PopularityRecall(world.cache, PROJECT, "item_stats", "popularity", 100)

    assert recall.recall(request()) == ["1", "3", "6", "2", "5"]


@pytest.mark.parametrize("feature", ["missing", "title"])
def test_popularity_recall_needs_a_numeric_feature(world, feature):
    recall = PopularityRecall(world.cache, PROJECT, "item_stats", feature, 3)

    with pytest.raises(FailedPrecondition):
        recall.recall(request())


def test_exclude_items_drops_the_context_ids():
    candidates = Candidates.of(["1", "2", "3"])

    keep = ExcludeItems("exclude_item_ids").keep(request(exclude_item_ids=["2", "9"]), candidates)

    assert candidates.take(keep).item_ids.tolist() == ["1", "3"]


def test_exclude_items_keeps_everything_without_the_context_key():
    keep = ExcludeItems("exclude_item_ids").keep(request(), Candidates.of(["1", "2"]))

    assert keep.tolist() == [True, True]


def test_exclude_items_wants_a_string_list():
    with pytest.raises(InvalidArgument) as error:
        ExcludeItems("exclude_item_ids").keep(
            request(exclude_item_ids=[1, 2]), Candidates.of(["1"])
        )

    assert error.value.field == "context.exclude_item_ids"


def test_ranked_candidates_sort_by_score_then_item_id_and_top_n_cuts():
    candidates = Candidates.of(
        ["b", "a", "c", "d", "e"], score=np.array([0.5, 0.5, 0.9, np.nan, 0.1])
    )

    result = TopN().rerank(request(size=4), by_score(candidates))

    assert result.item_ids.tolist() == ["c", "a", "b", "e"]
    assert result.columns["score"].tolist() == [0.9, 0.5, 0.5, 0.1]


@pytest.mark.parametrize("seed", range(20))
def test_by_score_is_score_then_item_id_with_or_without_ties(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 60))
    # Few distinct scores (ties), many (none), and NaNs, by seed.
    choices = [0.1, 0.5, 0.5, np.nan] if seed % 3 == 0 else rng.random(8)
    scores = rng.random(count) if seed % 3 == 1 else rng.choice(choices, count)
    ids = [f"i{n}" for n in rng.permutation(count)]

    ranked = by_score(Candidates.of(ids, score=scores))

    def order(i: int) -> tuple[bool, float, str]:
        missing = bool(np.isnan(scores[i]))
        return missing, 0.0 if missing else -scores[i], ids[i]

    expected = sorted(range(count), key=order)
    assert ranked.item_ids.tolist() == [ids[i] for i in expected]


def test_top_n_keeps_the_order_earlier_reranks_gave():
    reordered = Candidates.of(["x", "y", "z"], score=np.array([0.1, 0.9, 0.5]))

    assert TopN().rerank(request(size=2), reordered).item_ids.tolist() == ["x", "y"]


# --- rank and the pipeline ------------------------------------------------------------------


def test_rank_builds_the_feature_matrix_in_configured_order(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    scored = pipeline.score(replace(request(), keep_model_inputs=True), ["6", "1", "99"])
    unkept = pipeline.score(request(), ["6", "1", "99"])

    assert unkept.model_inputs() == {}  # carried through later stages only when asked for
    generated = scored.model_inputs()
    assert list(generated) == [
        "user_profile:age",
        "item_stats:price",
        "user_profile:activity",
        "item_stats:popularity",
    ]
    # age 30; price (6 has none, 99 is unknown: 0.0); activity missing: 0.0; popularity.
    matrix = np.float32([[30, 0, 0, 4], [30, 10, 0, 5], [30, 0, 0, 0]])
    np.testing.assert_array_equal(np.concatenate(list(generated.values()), axis=1), matrix)
    assert scored.columns["score"].tolist() == [0.0, 10.0, 0.0]  # the price column
    model, sent, outputs, _ = world.model.calls[0]
    np.testing.assert_array_equal(sent, matrix)
    assert (model, outputs) == ("ranker", ["probs_ctr"])
    assert sent.dtype == np.float32
    assert world.users.calls == 2 * [
        (PROJECT, ("user_profile:age", "user_profile:activity"), 7, VT.VALUE_TYPE_INT64)
    ]


def test_pipeline_runs_every_stage_in_order(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)
    before = REGISTRY.get_sample_value(
        "recstack_recommend_stage_seconds_count",
        {"scene": "home", "variant": "default", "stage": "pricey"},
    )

    result = pipeline.run(request(size=3, exclude_item_ids=["3"]))

    # popular: 1, 3, 6; pricey (by price): 5, 4. Filter drops 3; the model scores by price.
    assert result.candidates.item_ids.tolist() == ["5", "4", "1"]
    assert result.candidates.columns["recall_sources"].tolist() == [
        ("pricey",),
        ("pricey",),
        ("popular",),
    ]
    assert result.stage_counts == {
        "popular": 3,
        "pricey": 2,
        "exclude_items": 4,
        "rank": 4,
        "top_n": 3,
    }
    after = REGISTRY.get_sample_value(
        "recstack_recommend_stage_seconds_count",
        {"scene": "home", "variant": "default", "stage": "pricey"},
    )
    assert after == (before or 0) + 1


def test_the_rank_stage_times_its_feature_generation_and_model_call_apart(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    seconds = pipeline.run(request(size=3)).stage_seconds

    assert {"rank", "rank.fg", "rank.model"} <= set(seconds)
    assert seconds["rank.fg"] + seconds["rank.model"] <= seconds["rank"]
    # Score runs the same rank stage.
    assert REGISTRY.get_sample_value(
        "recstack_recommend_stage_seconds_count",
        {"scene": "home", "variant": "default", "stage": "rank.model"},
    )


def test_a_stage_run_outside_a_pipeline_times_nothing():
    with StageRequest("home", PROJECT, "7", {}, 3).timed("fg"):
        pass


def test_an_item_found_by_two_recalls_lists_both(world):
    scene = make_scene()
    scene.recalls[1].params.update({"feature": "popularity"})

    result = build_pipeline("home", scene, world.stages, world.deps).run(request())

    assert result.candidates.item_ids.tolist().count("1") == 1
    row = result.candidates.item_ids.tolist().index("1")
    assert result.candidates.columns["recall_sources"][row] == ("popular", "pricey")


def test_without_a_model_rank_keeps_recall_order(world):
    scene = make_scene(rank=scene_pb2.RankConfig())

    result = build_pipeline("home", scene, world.stages, world.deps).run(request())

    assert result.candidates.item_ids.tolist() == ["1", "3", "6", "5", "4"]
    assert world.model.calls == []


def test_model_server_down_degrades_to_recall_order_and_says_why(world):
    world.model.error = Unavailable(
        "Triton at 127.0.0.1:8001 is unavailable", reason="MODEL_SERVER_UNAVAILABLE"
    )
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)
    before = REGISTRY.get_sample_value(
        "recstack_recommend_degraded_total",
        {"scene": "home", "reason": "MODEL_SERVER_UNAVAILABLE"},
    )

    result = pipeline.run(request())

    # Recall order: the 3 most popular (5, 5 by id, then 4), then the 2 priciest (50, 40).
    assert result.candidates.item_ids.tolist() == ["1", "3", "6", "5", "4"]
    assert result.candidates.degraded.startswith("MODEL_SERVER_UNAVAILABLE: Triton at")
    after = REGISTRY.get_sample_value(
        "recstack_recommend_degraded_total",
        {"scene": "home", "reason": "MODEL_SERVER_UNAVAILABLE"},
    )
    assert after == (before or 0) + 1


def test_after_a_failure_the_model_server_is_skipped_then_tried_again(world):
    clock = [100.0]
    deps = replace(world.deps, model_breaker=ModelBreaker(initial=1.0, clock=lambda: clock[0]))
    pipeline = build_pipeline("home", make_scene(), world.stages, deps)
    world.model.error = DeadlineExceeded("too slow", reason="MODEL_SERVER_TIMEOUT")

    first = pipeline.run(request())
    world.model.error = None
    skipped = pipeline.run(request())
    clock[0] += 1.5
    resumed = pipeline.run(request())

    assert first.candidates.degraded.startswith("MODEL_SERVER_TIMEOUT")
    assert "skipping the model server" in skipped.candidates.degraded
    assert len(world.model.calls) == 2  # the failure, then the retry after the delay
    assert resumed.candidates.degraded == ""


def test_score_does_not_degrade_it_fails_unavailable(world):
    world.catalog.create(SCENE, "home", make_scene())
    world.model.error = Unavailable("down", reason="MODEL_SERVER_UNAVAILABLE")

    with pytest.raises(Unavailable, match="down"):
        world.recommender.score(ScoreQuery("home", "7", ["1"]))


def test_a_large_batch_is_split_at_the_models_limit(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)
    pipeline.rank.stage._max_batch = 2

    scored = pipeline.score(request(), ["1", "2", "3", "4", "5"])

    assert [len(call[1]) for call in world.model.calls] == [2, 2, 1]
    assert scored.columns["score"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_a_model_that_rejects_the_features_is_a_scene_problem(world):
    world.model.error = InvalidArgument("inputs.features", "expected 8 columns")
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    with pytest.raises(FailedPrecondition, match="rank model 'ranker'"):
        pipeline.run(request())


def test_a_non_integer_user_id_for_int64_users_is_invalid(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    with pytest.raises(InvalidArgument) as error:
        pipeline.run(replace(request(), user_id="alice"))

    assert error.value.field == "user_id"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope:age", "does not exist"),
        ("item_stats:nope", "no feature"),
        ("item_stats:title", "STRING"),
    ],
)
def test_rank_features_are_checked_against_the_registry(world, ref, message):
    scene = make_scene(rank=scene_pb2.RankConfig(model_name="m", score_output="o", features=[ref]))

    with pytest.raises(FailedPrecondition, match=message):
        build_pipeline("home", scene, world.stages, world.deps)


def test_rank_features_of_another_entity_are_refused(world):
    world.definitions.views["shops"] = ("shop", USER_PROFILE)
    scene = make_scene(
        rank=scene_pb2.RankConfig(model_name="m", score_output="o", features=["shops:age"])
    )

    with pytest.raises(FailedPrecondition, match="neither the user entity"):
        build_pipeline("home", scene, world.stages, world.deps)


def test_pipeline_lists_the_item_views_it_reads(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    assert pipeline.item_views == ("item_stats",)


# --- the Recommender ------------------------------------------------------------------------


def test_recommend_returns_items_sources_and_model_scores(world):
    world.catalog.create(SCENE, "home", make_scene())

    result = world.recommender.recommend(RecommendQuery("home", "7", size=2, debug=True))

    assert [(i.item_id, i.score, i.recall_sources) for i in result.items] == [
        ("5", 50.0, ("pricey",)),
        ("4", 40.0, ("pricey",)),
    ]
    assert result.items[0].model_scores == {"probs_ctr": 50.0}
    assert result.variants == ()
    assert result.stage_counts["top_n"] == 2


def test_recommend_defaults_size_to_the_scene_top_n(world):
    world.catalog.create(SCENE, "home", make_scene(top_n=4))

    result = world.recommender.recommend(RecommendQuery("home", "7"))

    assert len(result.items) == 4
    assert result.stage_counts == {}


def test_recommend_serves_and_lists_the_users_variant(world):
    world.catalog.create(SCENE, "home", make_scene())
    overrides = struct_pb2.Struct()
    overrides.update({"top_n": 1, "recalls": {"pricey": None}})
    experiment = experiment_pb2.Experiment(
        scene="home",
        variants=[
            experiment_pb2.Variant(name="all", bucket_start=0, bucket_end=100, overrides=overrides)
        ],
    )
    world.catalog.create(EXPERIMENT, "exp", experiment)

    result = world.recommender.recommend(RecommendQuery("home", "7"))

    # Only `popular` recalls (1, 3, 6); the model scores by price, so 3 wins.
    assert result.variants == ("exp/all",)
    assert [item.item_id for item in result.items] == ["3"]


def test_recommend_unknown_scene_is_not_found(world):
    with pytest.raises(NotFound):
        world.recommender.recommend(RecommendQuery("nope", "7"))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RecommendQuery("home", ""), "user_id"),
        (RecommendQuery("", "7"), "scene"),
        (RecommendQuery("home", "7", size=501), "size"),
        (RecommendQuery("home", "7", size=-1), "size"),
    ],
)
def test_recommend_bad_requests_name_the_field(world, query, field):
    world.catalog.create(SCENE, "home", make_scene())

    with pytest.raises(InvalidArgument) as error:
        world.recommender.recommend(query)

    assert error.value.field == field


def test_score_keeps_request_order_and_returns_debug_features(world):
    world.catalog.create(SCENE, "home", make_scene())

    scores = world.recommender.score(ScoreQuery("home", "7", ["2", "1"], debug_level=1))

    assert [(i.item_id, i.score) for i in scores.items] == [("2", 20.0), ("1", 10.0)]
    assert list(scores.features)[1] == "item_stats:price"
    np.testing.assert_array_equal(scores.features["item_stats:price"], [[20.0], [10.0]])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (ScoreQuery("home", "7", []), "item_ids"),
        (ScoreQuery("home", "7", ["1", ""]), "item_ids[1]"),
        (ScoreQuery("home", "", ["1"]), "user_id"),
        (ScoreQuery("home", "7", ["1"], debug_level=2), "debug_level"),
    ],
)
def test_score_bad_requests_name_the_field(world, query, field):
    world.catalog.create(SCENE, "home", make_scene())

    with pytest.raises(InvalidArgument) as error:
        world.recommender.score(query)

    assert error.value.field == field


def test_item_views_in_use_lists_every_scenes_item_views(world):
    world.catalog.create(SCENE, "home", make_scene())

    assert list(world.recommender.item_views_in_use()) == [(PROJECT, "item_stats")]


def test_nothing_recalled_means_no_model_call_and_no_items(world):
    world.store.rows["item_stats"] = ([], {k: [] for k in ITEM_ROWS}, [])
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    result = pipeline.run(request())

    assert len(result.candidates) == 0
    assert world.model.calls == []
    assert result.stage_counts["top_n"] == 0


def test_the_users_features_are_read_once_per_request_for_every_stage(world):
    pipeline = build_pipeline("home", make_scene(), world.stages, world.deps)

    pipeline.run(request())
    pipeline.run(request())

    assert (
        world.users.calls
        == [(PROJECT, ("user_profile:age", "user_profile:activity"), 7, VT.VALUE_TYPE_INT64)] * 2
    )


# --- rank with a registered model -------------------------------------------------------------

RANKER_FG = {
    "features": [
        {
            "feature_type": "id_feature",
            "feature_name": "item_id",
            "expression": "item:item_id",
            "hash_bucket_size": 1000,
        },
        {
            "feature_type": "id_feature",
            "feature_name": "title",
            "expression": "item:title",
            "vocab_list": ["a", "b", "c"],
        },
        {"feature_type": "raw_feature", "feature_name": "age", "expression": "user:age"},
        {"feature_type": "raw_feature", "feature_name": "price", "expression": "item:price"},
        {"feature_type": "raw_feature", "feature_name": "hour", "expression": "context:hour"},
    ]
}


def active(version: int, fg: dict = RANKER_FG) -> ActiveModel:
    return ActiveModel(
        "ctr",
        version,
        fg,
        ("user_profile:age", "item_stats:price", "item_stats:title"),
        f"shop__ctr__v{version}",
        "1",
        ("probs_ctr", "probs_cvr"),
    )


class TensorModelServer:
    """A two-output model over per-feature tensors: ctr = price / 100 + title row / 10,
    cvr = hour / 100; records what it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, list, str]] = []

    def infer(self, model, inputs, outputs, *, version=""):
        self.calls.append((model, inputs, list(outputs), version))
        ctr = inputs["price"] / 100 + inputs["title"].astype(np.float32) / 10
        cvr = inputs["hour"] / 100 + np.zeros_like(ctr)
        return {"probs_ctr": ctr, "probs_cvr": cvr}

    def is_ready(self, model=None):
        return True


def registered_scene(score_output: str = "") -> scene_pb2.Scene:
    return make_scene(rank=scene_pb2.RankConfig(model="ctr", score_output=score_output))


def test_a_registered_model_gets_one_typed_tensor_per_feature_and_keeps_every_output(world):
    world.definitions.models["ctr"] = active(3)
    model = TensorModelServer()
    deps = replace(world.deps, model_server=model)
    pipeline = build_pipeline("home", registered_scene(), world.stages, deps)

    scored = pipeline.score(replace(request(hour=12), keep_model_inputs=True), ["2", "1", "99"])

    name, sent, outputs, version = model.calls[0]
    assert (name, outputs, version) == ("shop__ctr__v3", ["probs_ctr", "probs_cvr"], "1")
    assert sent["title"].dtype == np.int64
    assert sent["title"].tolist() == [[2], [1], [-1]]  # b, a, unknown item: no value
    # The candidate's own id, hashed like every id token.
    assert sent["item_id"][:, 0].tolist() == [stable_hash(i) % 1000 for i in ("2", "1", "99")]
    assert sent["age"].tolist() == [[30.0]] * 3
    assert sent["hour"].tolist() == [[12.0]] * 3
    np.testing.assert_allclose(scored.columns["score"], [0.4, 0.2, -0.1], rtol=1e-6)
    np.testing.assert_allclose(scored.model_outputs()["probs_cvr"], [0.12] * 3, rtol=1e-6)
    assert list(scored.model_inputs()) == ["item_id", "title", "age", "price", "hour"]


def test_the_rank_follows_activations_without_rebuilding_the_pipeline(world):
    model = TensorModelServer()
    deps = replace(world.deps, model_server=model)
    world.definitions.models["ctr"] = active(1)
    pipeline = build_pipeline("home", registered_scene("probs_cvr"), world.stages, deps)

    pipeline.score(request(hour=1), ["1"])
    world.definitions.models["ctr"] = active(2)
    second = pipeline.score(request(hour=1), ["1"])

    assert [call[0] for call in model.calls] == ["shop__ctr__v1", "shop__ctr__v2"]
    assert second.columns["score"].tolist() == pytest.approx([0.01])


def test_a_registered_model_without_an_active_version_is_a_misconfigured_scene(world):
    pipeline = build_pipeline("home", registered_scene(), world.stages, world.deps)

    with pytest.raises(FailedPrecondition, match="no ACTIVE version") as error:
        pipeline.score(request(), ["1"])

    assert error.value.reason == "SCENE_MISCONFIGURED"


@pytest.mark.parametrize(
    ("fg", "message"),
    [
        (
            {"features": [{"feature_type": "raw_feature", "feature_name": "x"}]},
            "features[0].expression",
        ),
        (
            {
                "features": [
                    {"feature_type": "raw_feature", "feature_name": "x", "expression": "user:zip"}
                ]
            },
            "not a feature of the model feature set",
        ),
        (
            {
                "features": [
                    {"feature_type": "raw_feature", "feature_name": "x", "expression": "item:title"}
                ]
            },
            "needs a number",
        ),
    ],
)
def test_an_active_version_whose_fg_does_not_fit_fails_naming_the_feature(world, fg, message):
    world.definitions.models["ctr"] = active(4, fg)
    pipeline = build_pipeline("home", registered_scene(), world.stages, world.deps)

    with pytest.raises(FailedPrecondition, match=re.escape(message)) as error:
        pipeline.score(request(), ["1"])

    assert "version 4" in error.value.message


def test_a_score_output_the_model_lacks_is_refused(world):
    world.definitions.models["ctr"] = active(1)
    pipeline = build_pipeline("home", registered_scene("probs_gmv"), world.stages, world.deps)

    with pytest.raises(FailedPrecondition, match="probs_gmv"):
        pipeline.score(request(), ["1"])


def test_a_score_formula_combines_the_models_outputs(world):
    world.definitions.models["ctr"] = active(1)
    model = TensorModelServer()
    deps = replace(world.deps, model_server=model)
    scene = make_scene(
        rank=scene_pb2.RankConfig(model="ctr", score_formula="probs_ctr * probs_cvr ^ 0.5")
    )
    pipeline = build_pipeline("home", scene, world.stages, deps)

    scored = pipeline.score(request(hour=25), ["2", "1"])

    outputs = scored.model_outputs()
    np.testing.assert_allclose(
        scored.columns["score"], outputs["probs_ctr"] * np.sqrt(outputs["probs_cvr"])
    )


def test_a_formula_naming_an_output_the_model_lacks_is_a_misconfigured_scene(world):
    world.definitions.models["ctr"] = active(1)
    scene = make_scene(rank=scene_pb2.RankConfig(model="ctr", score_formula="probs_gmv * 2"))
    pipeline = build_pipeline("home", scene, world.stages, world.deps)

    with pytest.raises(FailedPrecondition, match=r"names \['probs_gmv'\]"):
        pipeline.score(request(), ["1"])


# --- served scenes: cached, refreshed through the change log -------------------------------


def test_requests_read_scenes_from_memory_and_another_writer_is_seen_after_the_refresh():
    repository = MemoryRepository()
    unit_of_work = repository.unit_of_work
    clock = [0.0]
    served = ServedScenes(unit_of_work, refresh_seconds=1.0, clock=lambda: clock[0])
    writer = Catalog(unit_of_work, default_stage_registry(), clock=lambda: NOW)
    writer.create(SCENE, "home", make_scene(top_n=10))

    first = served.snapshot("home")
    reads = repository.reads
    for _ in range(100):
        assert served.snapshot("home") is first
    assert repository.reads == reads  # no database read per request

    updated = writer.update(SCENE, replace_top_n(writer.get(SCENE, "scenes/home"), 5), ["top_n"])
    assert served.snapshot("home").scene.top_n == 10  # another replica's write: not yet
    clock[0] += 1.5
    assert served.snapshot("home").scene.top_n == updated.top_n == 5


def test_an_unknown_scene_is_not_cached_so_it_serves_as_soon_as_it_is_created(world):
    with pytest.raises(NotFound):
        world.catalog.snapshot("home")

    world.catalog.create(SCENE, "home", make_scene())

    assert world.catalog.snapshot("home").scene.top_n == 10


def replace_top_n(scene, top_n):
    changed = scene_pb2.Scene()
    changed.CopyFrom(scene)  # the in-memory repository hands out its stored message
    changed.top_n = top_n
    return changed


# --- references checked when a scene is saved ----------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"recalls": [popularity("popular", "nope", 3)]},
            "scene.recalls[0].params: feature view 'item_stats' has no feature 'nope'; it has "
            "['popularity', 'price', 'title']",
        ),
        (
            {"rank": scene_pb2.RankConfig(model="missing")},
            "scene.rank.model: projects/shop/models/missing does not exist",
        ),
        (
            {"rank": scene_pb2.RankConfig(model_name="m", features=["gone:x"], score_output="p")},
            "scene.rank.features[0]: projects/shop/featureViews/gone does not exist",
        ),
    ],
)
def test_a_scene_naming_what_the_registry_lacks_is_refused_when_saved(world, change, message):
    stages = default_stage_registry()
    catalog = Catalog(
        lambda: contextmanager(lambda: (yield MemoryRepository()))(),
        stages,
        check_references=partial(check_references, stages=stages, definitions=world.definitions),
    )
    scene = make_scene()
    for field, value in change.items():
        scene.ClearField(field)
        if isinstance(value, list):
            getattr(scene, field).extend(value)
        else:
            getattr(scene, field).CopyFrom(value)

    with pytest.raises(FailedPrecondition) as error:
        catalog.create(SCENE, "home", scene)

    assert error.value.message == message
    assert error.value.reason == "SCENE_REFERENCE_MISSING"
