"""Recall `popularity`: the items with the highest value of one numeric item feature.

params: `feature_view` (an item feature view id), `feature` (a numeric feature of it).
Reads the item cache, whose table memoises the ranking, so a request costs a slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    ItemSource,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.errors import InvalidArgument

PARAMS = ("feature_view", "feature")


@dataclass(frozen=True)
class PopularityRecall:
    items: ItemSource
    project: str
    feature_view: str
    feature: str
    quota: int

    def recall(self, request: StageRequest) -> Sequence[str]:
        return self.items.table(self.project, self.feature_view).top(self.feature, self.quota)


def build(settings: StageSettings, context: BuildContext) -> PopularityRecall:
    return PopularityRecall(
        context.deps.items,
        context.scene.project,
        settings.params["feature_view"],
        settings.params["feature"],
        settings.quota,
    )


def check(settings: StageSettings, path: str) -> None:
    for name in PARAMS:
        value = settings.params.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"{path}.params.{name}", "is required (a string)")
    unknown = sorted(set(settings.params) - set(PARAMS))
    if unknown:
        raise InvalidArgument(f"{path}.params", f"unknown parameters {unknown}; use {PARAMS}")


STAGE = StageType(
    StageKind.RECALL,
    "popularity",
    build,
    produces=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [settings.params["feature_view"]],
    references=lambda s: [f"{s.params['feature_view']}:{s.params['feature']}"],
)
