"""The built-in stage types, and the pipeline built from a scene with them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import partial

from recstack.recommend.v1 import scene_pb2

from services.recommend.filter import already_seen, exclude_items, item_state, rules
from services.recommend.pipeline import (
    RANK_NAME,
    RANK_TYPE,
    BuildContext,
    Named,
    Pipeline,
    StageDeps,
    StageKind,
    StageRegistry,
    StageSettings,
    StageType,
    UserFeatures,
)
from services.recommend.rank import model
from services.recommend.recall import category_affinity, item_to_item, popular, popularity, vector
from services.recommend.rerank import boost, category_diversity, mmr, stock, top_n
from shared.errors import FailedPrecondition, NotFound

BUILTIN_STAGES: tuple[StageType, ...] = (
    popularity.STAGE,
    popular.STAGE,
    vector.STAGE,
    item_to_item.STAGE,
    category_affinity.STAGE,
    exclude_items.STAGE,
    already_seen.STAGE,
    item_state.STAGE,
    rules.STAGE,
    model.STAGE,
    boost.STAGE,
    category_diversity.STAGE,
    mmr.STAGE,
    stock.STAGE,
    top_n.STAGE,
)


def default_stage_registry(extra: Iterable[StageType] = ()) -> StageRegistry:
    """A registry of the built-in stages plus `extra` (plugins, test doubles)."""
    return StageRegistry((*BUILTIN_STAGES, *extra))


def build_pipeline(
    scene_id: str, scene: scene_pb2.Scene, stages: StageRegistry, deps: StageDeps
) -> Pipeline:
    """Instantiate a (validated) scene's stages in run order."""
    context = BuildContext(scene_id, scene, deps)
    recalls = _build_all(StageKind.RECALL, scene.recalls, stages, context)
    filters = _build_all(StageKind.FILTER, scene.filters, stages, context)
    rank, _ = _build(StageKind.RANK, StageSettings(RANK_TYPE, RANK_NAME), stages, context)
    reranks = _build_all(StageKind.RERANK, scene.reranks, stages, context)
    views = [
        view
        for config_kind, configs in (
            (StageKind.RECALL, scene.recalls),
            (StageKind.FILTER, scene.filters),
            (StageKind.RERANK, scene.reranks),
        )
        for config in configs
        for view in _type(config_kind, config.type, stages, scene_id).item_views(
            StageSettings.from_proto(config)
        )
    ]
    return Pipeline(
        scene_id,
        tuple(named for named, _ in recalls),
        tuple(named for named, _ in filters),
        rank,
        tuple(named for named, _ in reranks),
        tuple(dict.fromkeys(views)),
        UserFeatures(deps.user_features, partial(_user_key_type, scene_id, scene, deps)),
    )


def _user_key_type(scene_id: str, scene: scene_pb2.Scene, deps: StageDeps) -> int:
    try:
        return int(deps.definitions.entity(scene.project, scene.user_entity).key_type)
    except NotFound as exc:
        raise FailedPrecondition(
            f"scene {scene_id!r}: user_entity {scene.user_entity!r}: {exc.message}",
            reason="SCENE_MISCONFIGURED",
        ) from None


def _build_all(
    kind: StageKind,
    configs: Iterable[scene_pb2.StageConfig],
    stages: StageRegistry,
    context: BuildContext,
) -> list[tuple[Named, StageType]]:
    return [_build(kind, StageSettings.from_proto(c), stages, context) for c in configs]


def _build(
    kind: StageKind, settings: StageSettings, stages: StageRegistry, context: BuildContext
) -> tuple[Named, StageType]:
    stage_type = _type(kind, settings.type, stages, context.scene_id)
    stage = stage_type.factory(settings, context)
    return Named(settings.name, stage, settings.quota), stage_type


def _type(kind: StageKind, name: str, stages: StageRegistry, scene_id: str) -> StageType:
    stage_type = stages.get(kind, name)
    if stage_type is None:
        # Validation admits only registered types; this is a scene stored by a build that had
        # more of them.
        raise FailedPrecondition(
            f"scene {scene_id!r} uses {kind} stage {name!r}, which this server does not have",
            reason="SCENE_MISCONFIGURED",
        )
    return stage_type


class PipelineCache:
    """Built pipelines by scene content, so requests reuse resolved stages and generators.

    Keyed by the scene's serialised bytes: an update, or a variant's overrides, is a new
    key, never a stale hit.
    """

    def __init__(self, stages: StageRegistry, deps: StageDeps, max_entries: int = 256) -> None:
        self._stages = stages
        self._deps = deps
        self._max_entries = max_entries
        self._pipelines: dict[tuple[str, bytes], Pipeline] = {}
        self._lock = threading.Lock()

    def get(self, scene_id: str, scene: scene_pb2.Scene) -> Pipeline:
        key = (scene_id, scene.SerializeToString(deterministic=True))
        pipeline = self._pipelines.get(key)
        if pipeline is not None:
            return pipeline
        pipeline = build_pipeline(scene_id, scene, self._stages, self._deps)
        with self._lock:
            if len(self._pipelines) >= self._max_entries:
                # Old scene versions pile up here; dropping all is simpler than LRU and rare.
                self._pipelines.clear()
            self._pipelines[key] = pipeline
        return pipeline
