"""Recall `category_affinity`: the popular items of the user's favourite categories.

params:
- `user_categories`: a user MAP<STRING,DOUBLE> feature of weights by category (e.g.
  `user_history:genre_counts`, ratings per genre over the user's history);
- `top_categories` (default 3): how many of the heaviest categories are used;
- `feature_view`, `feature`: the item popularity (as for `popular`);
- `category`: the item's STRING or ARRAY<STRING> category feature (e.g.
  `movie_attributes:genres`), whose values are the map's keys.

The quota is split across the chosen categories in proportion to their weights (largest
remainder), each taking its most popular items not taken yet, interleaved; a category that
runs out of items leaves its share to the others. Categories of weight <= 0 or without items
are skipped; a user the feature does not know gets nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from services.recommend.recall.categories import PopularityRankings
from shared.errors import FailedPrecondition

PARAMS = ("user_categories", "top_categories", "feature_view", "feature", "category")


@dataclass(frozen=True)
class CategoryAffinityRecall:
    rankings: PopularityRankings
    user_categories: str
    top_categories: int
    quota: int

    @property
    def user_refs(self) -> tuple[str, ...]:
        return (self.user_categories,)

    def recall(self, request: StageRequest) -> Sequence[str]:
        weights = self._weights(request.user.get(self.user_categories))
        if not weights:
            return []
        rankings = self.rankings.get()
        chosen = [(c, w) for c, w in weights if rankings.ranked(c)][: self.top_categories]
        if not chosen:
            return []
        lists = [rankings.ranked(category) for category, _ in chosen]
        shares = split(self.quota, [weight for _, weight in chosen])
        return interleave(lists, shares, self.quota)

    def _weights(self, value: Any) -> list[tuple[str, float]]:
        """(category, weight) with a positive weight, heaviest first, ties by name."""
        if value is None:
            return []
        if not isinstance(value, Mapping):
            raise FailedPrecondition(
                f"user feature {self.user_categories} is {type(value).__name__}, not a map "
                "of weights by category (MAP<STRING,DOUBLE>)",
                reason="FEATURE_NOT_A_MAP",
            )
        weights = [
            (str(category), float(weight))
            for category, weight in value.items()
            if isinstance(weight, int | float) and np.isfinite(weight) and weight > 0
        ]
        return sorted(weights, key=lambda pair: (-pair[1], pair[0]))


def split(quota: int, weights: Sequence[float]) -> list[int]:
    """`quota` in integer shares proportional to `weights` (largest remainder; ties to the
    earlier, heavier category)."""
    exact = np.asarray(weights, dtype=np.float64) / float(np.sum(weights)) * quota
    shares = np.floor(exact).astype(np.int64)
    remainder = quota - int(shares.sum())
    order = np.lexsort((np.arange(len(exact)), -(exact - shares)))
    shares[order[:remainder]] += 1
    return shares.tolist()


def interleave(lists: Sequence[Sequence[str]], shares: Sequence[int], quota: int) -> list[str]:
    """Round-robin over `lists`, each contributing up to its share of unseen items; then
    the lists with items left fill what exhausted ones could not."""
    taken: list[str] = []
    seen: set[str] = set()
    cursors = [0] * len(lists)
    for limits in (list(shares), [quota] * len(lists)):
        active = [i for i in range(len(lists)) if limits[i] > 0]
        while active and len(taken) < quota:
            for i in list(active):
                item = _next_unseen(lists[i], cursors, i, seen)
                if item is None:
                    active.remove(i)
                    continue
                taken.append(item)
                seen.add(item)
                limits[i] -= 1
                if limits[i] == 0:
                    active.remove(i)
                if len(taken) == quota:
                    break
    return taken


def _next_unseen(items: Sequence[str], cursors: list[int], i: int, seen: set[str]) -> str | None:
    while cursors[i] < len(items):
        item = items[cursors[i]]
        cursors[i] += 1
        if item not in seen:
            return item
    return None


def _read(settings: StageSettings, path: str) -> dict[str, Any]:
    params = Params(settings.params, path, PARAMS)
    return {
        "user_categories": ":".join(params.ref("user_categories")),
        "top_categories": params.whole("top_categories", 3, low=1, high=100),
        "popularity": f"{params.text('feature_view')}:{params.text('feature')}",
        "category": ":".join(params.ref("category")),
    }


def build(settings: StageSettings, context: BuildContext) -> CategoryAffinityRecall:
    read = _read(settings, "recall")
    rankings = PopularityRankings(
        context.deps.items, context.scene.project, read["popularity"], read["category"]
    )
    return CategoryAffinityRecall(
        rankings, read["user_categories"], read["top_categories"], settings.quota
    )


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RECALL,
    "category_affinity",
    build,
    produces=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [
        settings.params["feature_view"],
        settings.params["category"].split(":", 1)[0],
    ],
    references=lambda settings: [
        _read(settings, settings.name)[key] for key in ("popularity", "category", "user_categories")
    ],
)
