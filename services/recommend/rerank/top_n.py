"""Rerank `top_n`: the request's `size` first candidates.

The pipeline sorts candidates by score right after ranking (ties by item id), so without
other reranks these are the best scored; after reranks that reorder (diversity, MMR, stock)
it keeps their order instead of undoing it.
"""

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
        return candidates.take(np.arange(min(request.size, len(candidates))))


def build(_settings: StageSettings, _context: BuildContext) -> TopN:
    return TopN()


def check(settings: StageSettings, path: str) -> None:
    if settings.params:
        raise InvalidArgument(f"{path}.params", "top_n takes no parameters; size is top_n")


STAGE = StageType(StageKind.RERANK, "top_n", build, needs=frozenset({ITEM_ID, SCORE}), check=check)
