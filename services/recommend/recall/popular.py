"""Recall `popular`: the most popular items overall, or within one category.

params:
- `feature_view`, `feature`: the item popularity, a numeric feature a job computes over a
  recent window (e.g. `item_popularity` / `item_ratings_30d`, a 30-day count of ratings);
- optionally `category`: an item STRING or ARRAY<STRING> feature `view:feature` (e.g.
  `movie_attributes:genres`), with the category to rank in given by exactly one of
  - `category_value`: a fixed one (a genre channel), or
  - `category_context_key`: the request context's entry of that name (a STRING); a request
    without it gets the overall ranking.
Needs no user feature: it is what a user unknown to every view still gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from shared.errors import InvalidArgument

PARAMS = ("feature_view", "feature", "category", "category_value", "category_context_key")


@dataclass(frozen=True)
class PopularRecall:
    rankings: PopularityRankings
    quota: int
    category_value: str | None = None
    category_context_key: str | None = None

    def recall(self, request: StageRequest) -> Sequence[str]:
        return self.rankings.get().ranked(self._category(request))[: self.quota]

    def _category(self, request: StageRequest) -> str | None:
        if self.category_context_key is None:
            return self.category_value
        value = request.context.get(self.category_context_key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidArgument(
                f"context.{self.category_context_key}", "must be a STRING (a category)"
            )
        return value


def _read(settings: StageSettings, path: str) -> dict[str, Any]:
    params = Params(settings.params, path, PARAMS)
    read: dict[str, Any] = {
        "popularity": f"{params.text('feature_view')}:{params.text('feature')}",
        "category": ":".join(params.ref("category")) if "category" in params.params else None,
        "category_value": None,
        "category_context_key": None,
    }
    if read["category"] is None:
        for key in ("category_value", "category_context_key"):
            if key in params.params:
                raise InvalidArgument(params.at(key), "applies with `category` only")
        return read
    chosen = params.one_of("category_value", "category_context_key")
    read[chosen] = params.text(chosen)
    return read


def build(settings: StageSettings, context: BuildContext) -> PopularRecall:
    read = _read(settings, "recall")
    rankings = PopularityRankings(
        context.deps.items, context.scene.project, read["popularity"], read["category"]
    )
    return PopularRecall(
        rankings, settings.quota, read["category_value"], read["category_context_key"]
    )


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


def _references(read: dict[str, Any]) -> list[str]:
    return [read["popularity"], *([read["category"]] if read["category"] else [])]


def _views(settings: StageSettings) -> list[str]:
    category = settings.params.get("category")
    views = [settings.params["feature_view"]]
    return [*views, category.split(":", 1)[0]] if isinstance(category, str) else views


STAGE = StageType(
    StageKind.RECALL,
    "popular",
    build,
    produces=frozenset({ITEM_ID}),
    check=check,
    item_views=_views,
    references=lambda settings: _references(_read(settings, settings.name)),
)
