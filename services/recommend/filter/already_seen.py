"""Filter `already_seen`: drops the items the user has interacted with.

params: `features`: user features holding item ids (lists or single ids), e.g.
`["user_history:recent_items", "user_events:seen_items"]`. A REAL_TIME view written through
serving's `PushFeatures` works as well as a materialized one: user features are read for each
request (once, for every stage), so an item pushed a second ago is filtered now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    Candidates,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.feature_generator.values import tokens

PARAMS = ("features",)


@dataclass(frozen=True)
class AlreadySeen:
    features: tuple[str, ...]

    @property
    def user_refs(self) -> tuple[str, ...]:
        return self.features

    def keep(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        seen = {token for ref in self.features for token in _ids(request.user.get(ref))}
        if not seen:
            return np.ones(len(candidates), dtype=bool)
        return ~np.isin(candidates.item_ids, np.asarray(sorted(seen), dtype=str))


def _ids(value: object) -> Sequence[str]:
    try:
        return tokens(value, None)
    except TypeError:  # a map or another shape: not ids; the scene check catches most
        return ()


def build(settings: StageSettings, _context: BuildContext) -> AlreadySeen:
    return AlreadySeen(tuple(Params(settings.params, "", PARAMS).refs("features")))


def check(settings: StageSettings, path: str) -> None:
    Params(settings.params, path, PARAMS).refs("features")


STAGE = StageType(
    StageKind.FILTER,
    "already_seen",
    build,
    needs=frozenset({ITEM_ID}),
    check=check,
    references=lambda settings: Params(settings.params, "", PARAMS).refs("features"),
)
