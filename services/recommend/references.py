"""A scene's references to the registry, checked when the scene is saved.

Validation (`validation.py`) checks a scene's shape; this checks that what it names exists:
every feature view and feature its stages read, the entities it serves, and its rank model (a
registered Model, or the bare model's features). A scene naming something missing is refused
then, as FAILED_PRECONDITION naming the field, not at its first request.
"""

from __future__ import annotations

from collections.abc import Callable

from recstack.recommend.v1 import scene_pb2

from services.recommend.pipeline import Definitions, StageRegistry
from services.recommend.validation import configured_stages
from shared.errors import FailedPrecondition, NotFound

REASON = "SCENE_REFERENCE_MISSING"


def check_references(
    scene: scene_pb2.Scene, stages: StageRegistry, definitions: Definitions, path: str = "scene"
) -> None:
    project = scene.project
    for field in ("user_entity", "item_entity"):
        _exists(f"{path}.{field}", lambda f=field: definitions.entity(project, getattr(scene, f)))
    for config_path, settings, stage_type in configured_stages(scene, stages, path):
        for ref in stage_type.referenced(settings):
            _feature(definitions, project, ref, f"{config_path}.params")
    rank = scene.rank
    if rank.model:
        _exists(f"{path}.rank.model", lambda: definitions.model(project, rank.model))
    for index, ref in enumerate(rank.features):
        _feature(definitions, project, ref, f"{path}.rank.features[{index}]")


def _feature(definitions: Definitions, project: str, ref: str, path: str) -> None:
    view_id, _, feature = ref.partition(":")
    schema = _exists(path, lambda: definitions.view_schema(project, view_id))
    if feature and feature != schema.join_key and schema.feature(feature) is None:
        names = sorted(f.name for f in schema.features)
        raise FailedPrecondition(
            f"{path}: feature view {view_id!r} has no feature {feature!r}; it has {names}",
            reason=REASON,
        )


def _exists(path: str, load: Callable[[], object]) -> object:
    try:
        return load()
    except NotFound as exc:
        raise FailedPrecondition(f"{path}: {exc.message}", reason=REASON) from None
