"""Rerank `category_diversity`: at most `max_per_window` items of one category in any
`window` consecutive positions, keeping the score order as far as that allows.

params: `feature` (an item `view:feature` holding the category, single or multi-valued: an
item counts for each of its categories), `window` (default 5), `max_per_window` (default 2).
Greedy, like production rerankers: each position takes the best remaining item that keeps
the constraint; when none does (too few categories left), the best remaining one.
"""

from __future__ import annotations

from collections import Counter, deque
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
from shared.feature_generator.values import tokens

PARAMS = ("feature", "window", "max_per_window")


@dataclass(frozen=True)
class CategoryDiversity:
    items: ItemSource
    project: str
    view: str
    feature: str
    window: int
    max_per_window: int

    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        ids = candidates.item_ids.tolist()
        values = self.items.values(self.project, self.view, self.feature, ids).tolist()
        # Tokenized on first look: the greedy pass reads only the best-scored few dozen.
        categories = _Lazy(values)
        order = np.argsort(-candidates.columns[SCORE], kind="stable").tolist()
        placed: list[int] = []
        recent: deque[set[str]] = deque(maxlen=self.window - 1)
        counts: Counter[str] = Counter()
        # Only the positions a response shows need reordering; the rest keep score order.
        while order and len(placed) < request.size:
            pick = next(
                (i for i in order if all(counts[c] < self.max_per_window for c in categories[i])),
                order[0],
            )
            order.remove(pick)
            placed.append(pick)
            if len(recent) == recent.maxlen:
                counts.subtract(recent[0])
            recent.append(categories[pick])
            counts.update(categories[pick])
        return candidates.take(np.asarray(placed + order, dtype=np.int64))


class _Lazy(dict[int, frozenset[str]]):
    """Candidate position → its categories, tokenized when first asked for."""

    def __init__(self, values: list[object]) -> None:
        super().__init__()
        self._values = values

    def __missing__(self, position: int) -> frozenset[str]:
        found = self[position] = frozenset(_categories(self._values[position]))
        return found


def _categories(value: object) -> list[str]:
    try:
        return tokens(value, None)
    except TypeError:
        return []


def _read(settings: StageSettings, path: str) -> tuple[str, str, int, int]:
    params = Params(settings.params, path, PARAMS)
    view, feature = params.ref("feature")
    window = params.whole("window", 5, low=2, high=500)
    most = params.whole("max_per_window", 2, low=1, high=window - 1)
    return view, feature, window, most


def build(settings: StageSettings, context: BuildContext) -> CategoryDiversity:
    return CategoryDiversity(
        context.deps.items, context.scene.project, *_read(settings, settings.name)
    )


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RERANK,
    "category_diversity",
    build,
    needs=frozenset({ITEM_ID, SCORE}),
    check=check,
    item_views=lambda settings: [_read(settings, settings.name)[0]],
    references=lambda settings: [":".join(_read(settings, settings.name)[:2])],
)
