"""Rerank `top_n`: the request's `size` best candidates by score, ties broken by item id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recommend.pipeline import (
    ITEM_ID,
    SCORE,
    BuildContext,
    Candidates,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.errors import InvalidArgument


@dataclass(frozen=True)
class TopN:
    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        scores = candidates.columns[SCORE]
        # lexsort sorts by the last key first; NaN scores sort after every number.
        order = np.lexsort((candidates.item_ids, -scores))
        return candidates.take(order[: request.size])


def build(_settings: StageSettings, _context: BuildContext) -> TopN:
    return TopN()


def check(settings: StageSettings, path: str) -> None:
    if settings.params:
        raise InvalidArgument(f"{path}.params", "top_n takes no parameters; size is top_n")


STAGE = StageType(StageKind.RERANK, "top_n", build, needs=frozenset({ITEM_ID, SCORE}), check=check)
