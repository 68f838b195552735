"""A/B routing: stable user buckets, the variant each bucket serves, and scene overrides as data.

A user's bucket is a keyed hash of (salt, user id), so it never changes while the salt stays,
and layers with different salts split traffic independently. A variant's `overrides` is a
JSON Merge Patch (RFC 7386) on the scene's proto JSON, with one addition for stage lists: an
object in place of a list patches the listed stages by name, so `{"recalls": {"popular":
{"quota": 50}}}` changes one quota without restating the other recalls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from recstack.recommend.v1 import experiment_pb2, scene_pb2

# Fields an override may not change: identity and bookkeeping, not behaviour.
PROTECTED_SCENE_FIELDS = frozenset({"name", "etag", "create_time", "update_time", "project"})


class OverrideError(ValueError):
    """A variant's overrides do not apply to the scene."""


@dataclass(frozen=True)
class Assignment:
    """The scene a user is served and the `experiment/variant` labels that shaped it."""

    scene: scene_pb2.Scene
    variants: tuple[str, ...]


def bucket(user_id: str, salt: str, bucket_count: int) -> int:
    """The user's bucket in [0, bucket_count); the same for the same inputs on any machine."""
    # NUL cannot occur in either string, so ("a", "bc") and ("ab", "c") hash differently.
    digest = hashlib.blake2b(
        salt.encode() + b"\x00" + user_id.encode(), digest_size=8, person=b"recstack-ab"
    ).digest()
    return int.from_bytes(digest, "big") % bucket_count


def choose_variant(
    experiment: experiment_pb2.Experiment, user_id: str
) -> experiment_pb2.Variant | None:
    """The variant whose [bucket_start, bucket_end) holds the user's bucket, if any."""
    user_bucket = bucket(user_id, experiment.salt, experiment.bucket_count)
    for variant in experiment.variants:
        if variant.bucket_start <= user_bucket < variant.bucket_end:
            return variant
    return None


def assign(
    scene: scene_pb2.Scene, experiments: Iterable[experiment_pb2.Experiment], user_id: str
) -> Assignment:
    """Apply at most one variant per layer, layers in name order, to a copy of the scene."""
    return assignment_of(scene, chosen_variants(experiments, user_id))


Chosen = list[tuple[str, experiment_pb2.Variant]]


def chosen_variants(experiments: Iterable[experiment_pb2.Experiment], user_id: str) -> Chosen:
    """(experiment id, variant) serving the user, at most one per layer, layers in name order.

    Within a layer the first experiment (by name) whose variant takes the user wins, so
    experiments sharing a layer never both serve one request.
    """
    chosen: Chosen = []
    served_layers: set[str] = set()
    for experiment in sorted(experiments, key=lambda e: (e.layer, e.name)):
        if experiment.layer and experiment.layer in served_layers:
            continue
        variant = choose_variant(experiment, user_id)
        if variant is None:
            continue
        served_layers.add(experiment.layer)
        chosen.append((experiment_id(experiment), variant))
    return chosen


def assignment_of(scene: scene_pb2.Scene, chosen: Chosen) -> Assignment:
    """The scene with the chosen variants' overrides applied, in order."""
    effective = scene
    for _, variant in chosen:
        effective = apply_overrides(effective, variant_overrides(variant))
    return Assignment(effective, tuple(f"{exp_id}/{variant.name}" for exp_id, variant in chosen))


def experiment_id(experiment: experiment_pb2.Experiment) -> str:
    return experiment.name.rsplit("/", 1)[-1]


def variant_overrides(variant: experiment_pb2.Variant) -> dict[str, Any]:
    return json_format.MessageToDict(variant.overrides)


def apply_overrides(scene: scene_pb2.Scene, overrides: Mapping[str, Any]) -> scene_pb2.Scene:
    """A new scene: `overrides` merged into the scene's proto JSON (the input is unchanged)."""
    if not overrides:
        return scene
    protected = sorted(PROTECTED_SCENE_FIELDS & set(overrides))
    if protected:
        raise OverrideError(f"overrides may not change {protected}")
    document = json_format.MessageToDict(scene, preserving_proto_field_name=True)
    merged = merge(document, overrides)
    result = scene_pb2.Scene()
    try:
        json_format.ParseDict(merged, result)
    except json_format.ParseError as exc:
        raise OverrideError(str(exc)) from None
    return result


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge of `patch` into `target`, plus name-keyed patches of stage lists."""
    if isinstance(patch, Mapping) and isinstance(target, list):
        return _merge_named(target, patch)
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _merge_named(items: Sequence[Any], patch: Mapping[str, Any]) -> list[Any]:
    by_name = {_stage_name(item): index for index, item in enumerate(items)}
    unknown = sorted(set(patch) - set(by_name))
    if unknown:
        raise OverrideError(f"no stage named {unknown}; the list has {sorted(by_name)}")
    merged = list(items)
    for name, value in patch.items():
        merged[by_name[name]] = merge(merged[by_name[name]], value)
    return [item for item in merged if item is not None]


def _stage_name(item: Any) -> str:
    if not isinstance(item, Mapping):
        return ""
    return str(item.get("name") or item.get("type") or "")
