"""A valid recommendation scene for tests to start from and change one field of."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from recstack.recommend.v1 import scene_pb2


def params(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def scene_spec(*, quota: int = 100, **changes: Any) -> scene_pb2.Scene:
    """Popularity recall → exclude filter → `ranker` on Triton → top-N, with `changes` applied
    (lists replace the stage list, a RankConfig replaces the rank, others set the field)."""
    scene = scene_pb2.Scene(
        project="shop",
        user_entity="user",
        item_entity="item",
        recalls=[
            scene_pb2.StageConfig(
                type="popularity",
                quota=quota,
                params=params(feature_view="item_stats", feature="popularity"),
            )
        ],
        filters=[scene_pb2.StageConfig(type="exclude_items")],
        rank=scene_pb2.RankConfig(
            model_name="ranker",
            features=["user_profile:age", "item_stats:price"],
            score_output="probs_ctr",
        ),
        reranks=[scene_pb2.StageConfig(type="top_n")],
    )
    for field, value in changes.items():
        if isinstance(value, list):
            scene.ClearField(field)
            getattr(scene, field).extend(value)
        elif isinstance(value, scene_pb2.RankConfig):
            scene.rank.CopyFrom(value)
        else:
            setattr(scene, field, value)
    return scene
