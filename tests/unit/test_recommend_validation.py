"""Scene and experiment validation: each bad input is refused naming its field."""

from __future__ import annotations

import pytest
from recstack.recommend.v1 import experiment_pb2, scene_pb2

from services.recommend.pipeline import SCORE, StageKind, StageType
from services.recommend.stages import default_stage_registry
from services.recommend.validation import (
    apply_experiment_defaults,
    apply_scene_defaults,
    validate_experiment,
    validate_scene,
)
from shared.errors import InvalidArgument
from tests.scenes import params, scene_spec

STAGES = default_stage_registry()


def scene(**changes) -> scene_pb2.Scene:
    base = scene_spec(**changes)
    apply_scene_defaults(base)
    return base


def refused(target: scene_pb2.Scene, stages=STAGES) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        validate_scene(target, stages)
    return error.value


def test_a_complete_scene_passes_and_gets_defaults():
    valid = scene()

    validate_scene(valid, STAGES)
    assert valid.top_n == 20
    assert [r.name for r in valid.recalls] == ["popularity"]


@pytest.mark.parametrize("field", ["project", "user_entity", "item_entity"])
def test_required_ids(field):
    assert refused(scene(**{field: ""})).field == f"scene.{field}"


def test_unregistered_stage_types_list_the_registered_ones():
    error = refused(scene(recalls=[scene_pb2.StageConfig(type="ann", quota=10)]))

    assert error.field == "scene.recalls[0].type"
    assert "popularity" in error.description


def test_a_stage_of_another_kind_is_not_registered_here():
    error = refused(scene(reranks=[scene_pb2.StageConfig(type="exclude_items")]))

    assert error.field == "scene.reranks[0].type"


@pytest.mark.parametrize("quota", [0, -5, 10_001])
def test_recall_quota_must_be_positive_and_bounded(quota):
    recall = scene_pb2.StageConfig(
        type="popularity", quota=quota, params=params(feature_view="v", feature="f")
    )

    assert refused(scene(recalls=[recall])).field == "scene.recalls[0].quota"


def test_at_least_one_recall():
    assert refused(scene(recalls=[])).field == "scene.recalls"


@pytest.mark.parametrize("top_n", [-1, 501])
def test_top_n_range(top_n):
    assert refused(scene(top_n=top_n)).field == "scene.top_n"


def test_top_n_bounds_are_inclusive():
    validate_scene(scene(top_n=1), STAGES)
    validate_scene(scene(top_n=500), STAGES)


@pytest.mark.parametrize("ref", ["age", "user_profile:", ":age", "a:b:c", "User:age"])
def test_rank_features_must_be_view_feature_refs(ref):
    rank = scene_pb2.RankConfig(model_name="m", score_output="o", features=[ref])

    assert refused(scene(rank=rank)).field == "scene.rank.features[0]"


def test_rank_features_listed_once():
    rank = scene_pb2.RankConfig(model_name="m", score_output="o", features=["v:a", "v:a"])

    assert refused(scene(rank=rank)).field == "scene.rank.features"


def test_a_model_needs_a_score_output():
    rank = scene_pb2.RankConfig(model_name="ranker")

    assert refused(scene(rank=rank)).field == "scene.rank.score_output"


def test_popularity_needs_its_params():
    recall = scene_pb2.StageConfig(type="popularity", quota=5, params=params(feature="f"))

    assert refused(scene(recalls=[recall])).field == "scene.recalls[0].params.feature_view"


def test_stage_names_are_unique():
    recall = scene().recalls[0]

    error = refused(scene(recalls=[recall, recall]))

    assert error.field == "scene.recalls[1].name"


def test_a_stage_may_not_be_named_like_the_rank_stage():
    reranks = [scene_pb2.StageConfig(type="top_n", name="rank")]

    assert refused(scene(reranks=reranks)).field == "scene.reranks[0].name"


def test_a_stage_needing_a_column_no_earlier_stage_produces_is_refused():
    needs_score = StageType(
        StageKind.FILTER, "min_score", lambda settings, context: None, needs=frozenset({SCORE})
    )
    stages = default_stage_registry([needs_score])

    error = refused(scene(filters=[scene_pb2.StageConfig(type="min_score")]), stages)

    assert error.field == "scene.filters[0].type"
    assert "score" in error.description


def experiment_of(*ranges: tuple[str, int, int], **fields) -> experiment_pb2.Experiment:
    experiment = experiment_pb2.Experiment(
        scene=fields.pop("scene", "home"),
        variants=[
            experiment_pb2.Variant(name=name, bucket_start=start, bucket_end=end)
            for name, start, end in ranges
        ],
        **fields,
    )
    apply_experiment_defaults(experiment, "exp")
    return experiment


def test_experiment_defaults():
    experiment = experiment_of(("a", 0, 50), layer="ranking")

    validate_experiment(experiment)
    assert experiment.bucket_count == 100
    assert experiment.salt == "ranking"


@pytest.mark.parametrize(
    ("experiment", "field"),
    [
        (experiment_of(("a", 0, 50), scene=""), "experiment.scene"),
        (experiment_of(), "experiment.variants"),
        (experiment_of(("a", 0, 101)), "experiment.variants[0]"),
        (experiment_of(("a", 10, 10)), "experiment.variants[0]"),
        (experiment_of(("a", -1, 10)), "experiment.variants[0]"),
        (experiment_of(("a", 0, 50), ("b", 40, 60)), "experiment.variants[1]"),
        (experiment_of(("a", 0, 50), ("a", 50, 60)), "experiment.variants[1].name"),
        (experiment_of(("a", 0, 5), bucket_count=20_000), "experiment.bucket_count"),
    ],
)
def test_bad_experiments_name_the_field(experiment, field):
    with pytest.raises(InvalidArgument) as error:
        validate_experiment(experiment)

    assert error.value.field == field
