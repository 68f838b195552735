"""Recommend and Score: a scene's pipeline, shaped by the user's experiment variants, run for one
request. Knows nothing of gRPC: queries in, plain results out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from services.recommend.catalog import Catalog
from services.recommend.experiments import OverrideError, assign
from services.recommend.item_cache import ViewKey
from services.recommend.pipeline import (
    NO_VARIANT,
    RECALL_SOURCES,
    SCORE,
    Candidates,
    StageRequest,
)
from services.recommend.stages import PipelineCache
from services.recommend.validation import MAX_TOP_N
from shared.errors import FailedPrecondition, InvalidArgument, Unavailable

log = structlog.get_logger(__name__)

MAX_SCORE_ITEMS = 1000


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


class Recommender:
    def __init__(self, catalog: Catalog, pipelines: PipelineCache) -> None:
        self._catalog = catalog
        self._pipelines = pipelines

    def recommend(self, query: RecommendQuery) -> Recommendation:
        _require(query.scene, "scene")
        _require(query.user_id, "user_id")
        if not 0 <= query.size <= MAX_TOP_N:
            raise InvalidArgument("size", f"must be 0 (the scene's top_n) to {MAX_TOP_N}")
        snapshot = self._catalog.snapshot(query.scene)
        try:
            assignment = assign(snapshot.scene, snapshot.experiments, query.user_id)
        except OverrideError as exc:
            raise FailedPrecondition(
                f"an experiment on scene {query.scene!r} no longer applies: {exc}",
                reason="EXPERIMENT_MISCONFIGURED",
            ) from None
        scene = assignment.scene
        pipeline = self._pipelines.get(query.scene, scene)
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
