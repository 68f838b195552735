"""Filter `exclude_items`: drops the item ids the request lists in its context.

params: `context_key` (default `exclude_item_ids`): the context entry, a STRING_LIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    Candidates,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.errors import InvalidArgument

DEFAULT_CONTEXT_KEY = "exclude_item_ids"


@dataclass(frozen=True)
class ExcludeItems:
    context_key: str

    def keep(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        excluded = request.context.get(self.context_key)
        if excluded is None:
            return np.ones(len(candidates), dtype=bool)
        if not isinstance(excluded, list) or not all(isinstance(i, str) for i in excluded):
            raise InvalidArgument(
                f"context.{self.context_key}", "must be a STRING_LIST of item ids"
            )
        return ~np.isin(candidates.item_ids, np.asarray(excluded, dtype=str))


def build(settings: StageSettings, _context: BuildContext) -> ExcludeItems:
    return ExcludeItems(settings.params.get("context_key", DEFAULT_CONTEXT_KEY))


def check(settings: StageSettings, path: str) -> None:
    key = settings.params.get("context_key", DEFAULT_CONTEXT_KEY)
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"{path}.params.context_key", "must be a non-empty string")
    unknown = sorted(set(settings.params) - {"context_key"})
    if unknown:
        raise InvalidArgument(f"{path}.params", f"unknown parameters {unknown}")


STAGE = StageType(StageKind.FILTER, "exclude_items", build, needs=frozenset({ITEM_ID}), check=check)
