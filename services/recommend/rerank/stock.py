"""Rerank `stock`: items with too little stock move behind every item with enough.

params: `feature` (an item `view:feature`, the quantity in stock), `min_stock` (default 1),
`missing` (`demote` by default, or `keep`: items the view has no quantity for). Both groups
keep their order, so the scarce items remain ranked among themselves; drop them instead with
the `item_state` filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    Candidates,
    ItemSource,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)

PARAMS = ("feature", "min_stock", "missing")
MAX_STOCK = 1e12


@dataclass(frozen=True)
class Stock:
    items: ItemSource
    project: str
    view: str
    feature: str
    min_stock: float
    keep_missing: bool

    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        ids = candidates.item_ids.tolist()
        stock = np.asarray(
            self.items.values(self.project, self.view, self.feature, ids), dtype=np.float64
        )
        missing = np.isnan(stock)
        enough = np.where(missing, self.keep_missing, stock >= self.min_stock)
        order = np.concatenate([np.flatnonzero(enough), np.flatnonzero(~enough)])
        return candidates.take(order)


def _read(settings: StageSettings, path: str) -> tuple[str, str, float, bool]:
    params = Params(settings.params, path, PARAMS)
    view, feature = params.ref("feature")
    minimum = params.number("min_stock", 1.0, low=0.0, high=MAX_STOCK)
    return view, feature, minimum, params.choice("missing", ("demote", "keep"), "demote") == "keep"


def build(settings: StageSettings, context: BuildContext) -> Stock:
    return Stock(context.deps.items, context.scene.project, *_read(settings, settings.name))


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RERANK,
    "stock",
    build,
    needs=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [_read(settings, settings.name)[0]],
    references=lambda settings: [":".join(_read(settings, settings.name)[:2])],
)
