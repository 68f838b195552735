"""Recommend and Score: a scene's pipeline, shaped by the user's experiment variants, run for one
request. Knows nothing of gRPC: queries in, plain results out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from services.recommend.catalog import Catalog, ServingSnapshot
from services.recommend.experiments import (
    Assignment,
    Chosen,
    OverrideError,
    assignment_of,
    chosen_variants,
)
from services.recommend.item_cache import ViewKey
from services.recommend.pipeline import (
    NO_VARIANT,
    RECALL_SOURCES,
    SCORE,
    Candidates,
    Pipeline,
    StageRequest,
)
from services.recommend.stages import PipelineCache
from services.recommend.validation import MAX_TOP_N
from shared.errors import FailedPrecondition, InvalidArgument, Unavailable

log = structlog.get_logger(__name__)

MAX_SCORE_ITEMS = 1000
# Built (snapshot, variants) → scene and pipeline entries kept before starting over.
MAX_ASSIGNMENTS = 1024


@dataclass(frozen=True)
class RecommendQuery:
    scene: str
    user_id: str
    context: Mapping[str, Any] = field(default_factory=dict)
    size: int = 0
    debug: bool = False


@dataclass(frozen=True)
class ScoreQuery:
    scene: str
    user_id: str
    item_ids: Sequence[str]
    context: Mapping[str, Any] = field(default_factory=dict)
    debug_level: int = 0


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    recall_sources: tuple[str, ...] = ()
    model_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    # `experiment/variant` of every variant that served the request.
    variants: tuple[str, ...]
    stage_counts: dict[str, int]
    # Why the items are in recall order instead of the model's (empty when ranked).
    degraded: str = ""
    # Why there are no items (empty when there are).
    empty_reason: str = ""
    stage_millis: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    items: list[ScoredItem]
    # With debug_level 1: each generated model input, [items, *dims], in generation order.
    features: dict[str, np.ndarray] | None = None


def assignment_key(snapshot: ServingSnapshot, chosen: Chosen) -> tuple[Any, ...]:
    """The cache key of a user's variant combination within one snapshot. Variants by
    (experiment id, name), never by `id()`: protobuf (upb) hands out a fresh wrapper for each
    access to a repeated field's element, so two variants' wrappers can share an address and
    one user would be served another variant's scene."""
    return (id(snapshot), *((experiment, variant.name) for experiment, variant in chosen))


class Recommender:
    def __init__(self, catalog: Catalog, pipelines: PipelineCache) -> None:
        self._catalog = catalog
        self._pipelines = pipelines
        self._assignments: dict[tuple[Any, ...], tuple[ServingSnapshot, Assignment, Pipeline]] = {}
        self._lock = threading.Lock()

    def recommend(self, query: RecommendQuery) -> Recommendation:
        _require(query.scene, "scene")
        _require(query.user_id, "user_id")
        if not 0 <= query.size <= MAX_TOP_N:
            raise InvalidArgument("size", f"must be 0 (the scene's top_n) to {MAX_TOP_N}")
        snapshot = self._catalog.snapshot(query.scene)
        assignment, pipeline = self._served(query.scene, snapshot, query.user_id)
        scene = assignment.scene
        request = StageRequest(
            query.scene, scene.project, query.user_id, query.context, query.size or scene.top_n
        )
        result = pipeline.run(request, ",".join(assignment.variants) or NO_VARIANT)
        return Recommendation(
            _items(result.candidates),
            assignment.variants,
            result.stage_counts if query.debug else {},
            result.candidates.degraded,
            result.empty_reason,
            {name: seconds * 1000 for name, seconds in result.stage_seconds.items()}
            if query.debug
            else {},
        )

    def _served(
        self, scene_id: str, snapshot: ServingSnapshot, user_id: str
    ) -> tuple[Assignment, Pipeline]:
        """The user's variants of the scene and their pipeline. Built once per snapshot and
        variant combination: the overrides' JSON round trip and the pipeline's cache key cost
        about a millisecond, and a snapshot's objects stay the same until the scene changes."""
        chosen = chosen_variants(snapshot.experiments, user_id)
        key = assignment_key(snapshot, chosen)
        found = self._assignments.get(key)
        if found is not None and found[0] is snapshot:
            return found[1], found[2]
        try:
            assignment = assignment_of(snapshot.scene, chosen)
        except OverrideError as exc:
            raise FailedPrecondition(
                f"an experiment on scene {scene_id!r} no longer applies: {exc}",
                reason="EXPERIMENT_MISCONFIGURED",
            ) from None
        pipeline = self._pipelines.get(scene_id, assignment.scene)
        with self._lock:
            if len(self._assignments) >= MAX_ASSIGNMENTS:
                # Snapshots replaced by a refresh leave theirs behind; rebuilding is cheap.
                self._assignments.clear()
            # The entry holds the snapshot, so the ids in its key cannot be reused.
            self._assignments[key] = (snapshot, assignment, pipeline)
        return assignment, pipeline

    def score(self, query: ScoreQuery) -> Scores:
        """Scores with the scene as stored: experiments route Recommend traffic only, so a
        Score call is reproducible from the scene alone."""
        _require(query.scene, "scene")
        _require(query.user_id, "user_id")
        if not 1 <= len(query.item_ids) <= MAX_SCORE_ITEMS:
            raise InvalidArgument("item_ids", f"send 1..{MAX_SCORE_ITEMS} item ids")
        for index, item_id in enumerate(query.item_ids):
            _require(item_id, f"item_ids[{index}]")
        if query.debug_level not in (0, 1):
            raise InvalidArgument("debug_level", "must be 0 or 1")
        scene = self._catalog.snapshot(query.scene).scene
        pipeline = self._pipelines.get(query.scene, scene)
        request = StageRequest(
            query.scene,
            scene.project,
            query.user_id,
            query.context,
            len(query.item_ids),
            keep_model_inputs=query.debug_level == 1,
        )
        candidates = pipeline.score(request, query.item_ids)
        if candidates.degraded:
            # Score asks for the model's scores: recall order would be a wrong answer.
            raise Unavailable(
                f"scene {query.scene!r} cannot score now: {candidates.degraded}",
                reason="MODEL_SERVER_UNAVAILABLE",
            )
        if query.debug_level == 0:
            return Scores(_items(candidates))
        return Scores(_items(candidates), candidates.model_inputs())

    def item_views_in_use(self) -> Iterator[ViewKey]:
        """(project, view) of every item view a stored scene reads, to warm the item cache."""
        for scene_id, scene in self._catalog.scenes():
            try:
                pipeline = self._pipelines.get(scene_id, scene)
            except Exception:  # one broken scene must not keep the others cold
                log.warning("scene_not_buildable", scene=scene_id, exc_info=True)
                continue
            for view in pipeline.item_views:
                yield scene.project, view


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")


def _items(candidates: Candidates) -> list[ScoredItem]:
    scores = candidates.columns.get(SCORE, np.zeros(len(candidates)))
    sources = candidates.columns.get(RECALL_SOURCES)
    outputs = candidates.model_outputs()
    return [
        ScoredItem(
            item_id,
            float(scores[row]),
            tuple(sources[row]) if sources is not None else (),
            {name: float(column[row]) for name, column in outputs.items()},
        )
        for row, item_id in enumerate(candidates.item_ids.tolist())
    ]
