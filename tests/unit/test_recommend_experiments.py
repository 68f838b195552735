"""Experiment routing: stable buckets, variant ranges, layers, and overrides as data."""

from __future__ import annotations

from collections import Counter

import pytest
from google.protobuf import struct_pb2
from recstack.recommend.v1 import experiment_pb2, scene_pb2

from services.recommend.experiments import (
    OverrideError,
    apply_overrides,
    assign,
    bucket,
    choose_variant,
    merge,
)
from services.recommend.recommender import assignment_key


def overrides(data: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def experiment(
    name: str, variants: list[tuple[str, int, int, dict]], **fields
) -> experiment_pb2.Experiment:
    return experiment_pb2.Experiment(
        name=f"experiments/{name}",
        scene="home",
        bucket_count=fields.pop("bucket_count", 100),
        salt=fields.pop("salt", name),
        variants=[
            experiment_pb2.Variant(
                name=variant, bucket_start=start, bucket_end=end, overrides=overrides(data)
            )
            for variant, start, end, data in variants
        ],
        **fields,
    )


SCENE = scene_pb2.Scene(
    name="scenes/home",
    project="shop",
    user_entity="user",
    item_entity="item",
    recalls=[
        scene_pb2.StageConfig(type="popularity", name="popular", quota=100),
        scene_pb2.StageConfig(type="popularity", name="fresh", quota=50),
    ],
    rank=scene_pb2.RankConfig(model_name="ranker", score_output="probs_ctr"),
    top_n=20,
)


def test_bucket_is_stable_and_in_range():
    assert bucket("user-7", "layer-a", 100) == bucket("user-7", "layer-a", 100)
    assert all(0 <= bucket(str(user), "s", 100) < 100 for user in range(1000))


def test_bucket_values_are_pinned():
    # Changing the hash would silently move every user to another variant mid-experiment.
    assert bucket("42", "home_layer", 1000) == 351
    assert bucket("user-7", "layer-a", 100) == 69


def test_buckets_cover_every_range_about_evenly():
    counts = Counter(bucket(str(user), "salt", 10) for user in range(20_000))

    assert sorted(counts) == list(range(10))
    assert min(counts.values()) > 1_700  # 2,000 expected per bucket


def test_salt_and_separator_change_the_split():
    users = [str(user) for user in range(200)]

    assert [bucket(u, "a", 100) for u in users] != [bucket(u, "b", 100) for u in users]
    assert bucket("bc", "a", 1 << 30) != bucket("c", "ab", 1 << 30)


def test_variant_ranges_are_half_open_and_cover_only_their_buckets():
    exp = experiment("exp", [("control", 0, 50, {}), ("treatment", 50, 90, {})])
    served = Counter()
    for user in range(5_000):
        variant = choose_variant(exp, str(user))
        user_bucket = bucket(str(user), "exp", 100)
        expected = "control" if user_bucket < 50 else "treatment" if user_bucket < 90 else None
        assert (variant.name if variant else None) == expected
        served[expected] += 1

    assert served["control"] > served["treatment"] > served[None] > 0


def test_assign_applies_the_variant_and_lists_it():
    exp = experiment("exp", [("big", 0, 100, {"top_n": 5, "rank": {"model_name": "ranker_b"}})])

    assignment = assign(SCENE, [exp], "u1")

    assert assignment.variants == ("exp/big",)
    assert assignment.scene.top_n == 5
    assert assignment.scene.rank.model_name == "ranker_b"
    assert assignment.scene.rank.score_output == "probs_ctr"  # merged, not replaced
    assert SCENE.top_n == 20  # the stored scene is untouched


def test_users_outside_every_range_get_the_scene_unchanged():
    exp = experiment("exp", [("none", 0, 1, {"top_n": 1})], bucket_count=1_000_000)

    assignment = assign(SCENE, [exp], "u1")

    assert assignment.variants == ()
    assert assignment.scene == SCENE


def test_one_variant_per_layer_and_independent_layers():
    first = experiment("a_first", [("x", 0, 100, {"top_n": 3})], layer="ranking")
    second = experiment("b_second", [("y", 0, 100, {"top_n": 4})], layer="ranking")
    other = experiment("c_other", [("z", 0, 100, {"description": "z"})], layer="recall")

    assignment = assign(SCENE, [other, second, first], "u1")

    assert assignment.variants == ("a_first/x", "c_other/z")
    assert assignment.scene.top_n == 3
    assert assignment.scene.description == "z"


def test_merge_is_json_merge_patch():
    target = {"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 1}

    assert merge(target, {"a": {"b": 9}, "d": [3], "e": None}) == {"a": {"b": 9, "c": 2}, "d": [3]}


def test_an_object_patches_stage_lists_by_name():
    result = apply_overrides(SCENE, {"recalls": {"fresh": {"quota": 7}}})

    assert [(r.name, r.quota) for r in result.recalls] == [("popular", 100), ("fresh", 7)]


def test_null_in_a_named_patch_removes_the_stage():
    result = apply_overrides(SCENE, {"recalls": {"fresh": None}})

    assert [r.name for r in result.recalls] == ["popular"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"recalls": {"nope": {"quota": 1}}}, "no stage named"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"top_n": "many"}, "top_n"),
        ({"project": "other"}, "may not change"),
    ],
)
def test_overrides_that_do_not_fit_the_scene_are_refused(patch, message):
    with pytest.raises(OverrideError, match=message):
        apply_overrides(SCENE, patch)


def test_ten_thousand_users_split_within_one_and_a_half_points_of_the_shares():
    split = experiment(
        "ranker_ab",
        [("control", 0, 70, {}), ("treatment", 70, 90, {"top_n": 10}), ("holdout", 90, 100, {})],
    )
    users = [str(user) for user in range(1, 10_001)]

    served = Counter(assign(SCENE, [split], user).variants[0] for user in users)
    again = [assign(SCENE, [split], user).variants for user in users]

    shares = {name.split("/")[1]: count / len(users) for name, count in served.items()}
    for name, share in {"control": 0.7, "treatment": 0.2, "holdout": 0.1}.items():
        assert abs(shares[name] - share) <= 0.015, (name, shares[name])
    assert again == [assign(SCENE, [split], user).variants for user in users]


def test_the_assignment_cache_key_tells_variants_apart_whatever_their_wrappers_ids():
    # upb hands out a transient wrapper per element access: two variants' wrappers can share
    # an address, so a key made of id(variant) served one user another variant's scene.
    experiment = experiment_pb2.Experiment(
        variants=[experiment_pb2.Variant(name="control"), experiment_pb2.Variant(name="short")]
    )
    snapshot = object()
    control = assignment_key(snapshot, [("ab", experiment.variants[0])])
    short = assignment_key(snapshot, [("ab", experiment.variants[1])])
    assert control != short
    assert control == assignment_key(snapshot, [("ab", experiment.variants[0])])
