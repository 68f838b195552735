"""Filter `item_state`: keeps items whose state feature says they can be shown.

params: `feature`: an item `view:feature` (BOOL or numeric, e.g. `inventory:in_stock`;
non-zero is true); `keep_when` (default true): the value that keeps an item (false for an
`inactive` flag); `missing` (`drop` by default, or `keep`): items the view has no value for.
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

PARAMS = ("feature", "keep_when", "missing")


@dataclass(frozen=True)
class ItemState:
    items: ItemSource
    project: str
    view: str
    feature: str
    keep_when: bool
    keep_missing: bool

    def keep(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        ids = candidates.item_ids.tolist()
        values = self.items.values(self.project, self.view, self.feature, ids)
        if values.dtype == np.float64:
            missing = np.isnan(values)
            truthy = ~missing & (values != 0)
        else:
            missing = np.array([value is None for value in values], dtype=bool)
            truthy = np.array([bool(value) for value in values], dtype=bool)
        keep = truthy == self.keep_when
        keep[missing] = self.keep_missing
        return keep


def build(settings: StageSettings, context: BuildContext) -> ItemState:
    params = Params(settings.params, "", PARAMS)
    view, feature = params.ref("feature")
    return ItemState(
        context.deps.items,
        context.scene.project,
        view,
        feature,
        params.boolean("keep_when", True),
        params.choice("missing", ("drop", "keep"), "drop") == "keep",
    )


def check(settings: StageSettings, path: str) -> None:
    params = Params(settings.params, path, PARAMS)
    params.ref("feature")
    params.boolean("keep_when", True)
    params.choice("missing", ("drop", "keep"), "drop")


STAGE = StageType(
    StageKind.FILTER,
    "item_state",
    build,
    needs=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [str(settings.params["feature"]).partition(":")[0]],
    references=lambda settings: [str(settings.params["feature"])],
)
