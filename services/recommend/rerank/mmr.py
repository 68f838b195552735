"""Rerank `mmr`: maximal marginal relevance (Carbonell & Goldstein, 1998) on item embeddings.

Each position takes the remaining item with the highest
`lambda * relevance - (1 - lambda) * max cosine similarity to the items already placed`,
relevance being the score scaled to [0, 1] over the candidates. lambda 1 keeps the score
order, lower values trade relevance for variety.

params: `feature` (an item `view:feature` of ARRAY<FLOAT> embeddings; an item without one is
similar to nothing), `lambda` (default 0.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    SCORE,
    BuildContext,
    Candidates,
    ItemSource,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)

PARAMS = ("feature", "lambda")


@dataclass(frozen=True)
class Mmr:
    items: ItemSource
    project: str
    view: str
    feature: str
    weight: float

    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        count = len(candidates)
        if count < 2:
            return candidates
        ids = candidates.item_ids.tolist()
        vectors = _unit_vectors(
            self.items.values(self.project, self.view, self.feature, ids).tolist()
        )
        relevance = _scaled(candidates.columns[SCORE])
        similarity = vectors @ vectors.T
        chosen: list[int] = []
        closest = np.zeros(count)  # the max similarity of each item to the chosen ones
        remaining = np.ones(count, dtype=bool)
        for _ in range(min(request.size, count)):
            value = self.weight * relevance - (1 - self.weight) * closest
            value[~remaining] = -np.inf
            pick = int(np.argmax(value))
            chosen.append(pick)
            remaining[pick] = False
            closest = np.maximum(closest, similarity[pick])
        rest = [i for i in np.argsort(-relevance, kind="stable").tolist() if remaining[i]]
        return candidates.take(np.asarray(chosen + rest, dtype=np.int64))


def _unit_vectors(values: list[object]) -> np.ndarray:
    width = max((len(v) for v in values if isinstance(v, list | tuple | np.ndarray)), default=0)
    matrix = np.zeros((len(values), max(width, 1)))
    for row, value in enumerate(values):
        if isinstance(value, list | tuple | np.ndarray) and len(value) == width:
            matrix[row] = value
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _scaled(scores: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(scores), scores, np.nan)
    low, high = np.nanmin(finite), np.nanmax(finite)
    if not np.isfinite(low) or high == low:
        return np.ones(len(scores))
    return np.nan_to_num((finite - low) / (high - low), nan=0.0)


def _read(settings: StageSettings, path: str) -> tuple[str, str, float]:
    params = Params(settings.params, path, PARAMS)
    view, feature = params.ref("feature")
    return view, feature, params.number("lambda", 0.7, low=0.0, high=1.0)


def build(settings: StageSettings, context: BuildContext) -> Mmr:
    return Mmr(context.deps.items, context.scene.project, *_read(settings, settings.name))


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RERANK,
    "mmr",
    build,
    needs=frozenset({ITEM_ID, SCORE}),
    check=check,
    item_views=lambda settings: [_read(settings, settings.name)[0]],
    references=lambda settings: [":".join(_read(settings, settings.name)[:2])],
)
