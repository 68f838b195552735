"""Recall `vector`: the items nearest to the user's vector among an item view's embeddings.

params:
- `feature_view`, `feature`: the item view and its ARRAY<FLOAT> field (e.g. the MovieLens
  `item_embeddings:embedding`, or `item_review_text:review_text_embedding`, minilm's 384-d);
- the user's vector, exactly one of
  - `user_vector`: a user ARRAY<FLOAT> feature `view:feature` (e.g. a user tower's output), or
  - `user_history`: a user ARRAY<INT64|STRING> feature of recent item ids, newest first
    (e.g. `user_history:recent_items`): the mean of the first `history_length` (default 20)
    of their vectors; the whole history is left out of the result;
- `metric`: `inner_product` (default) or `cosine`;
- `index`: `flat` (default, exact), `ivf` (`nlist`, default about 4·sqrt(items); `nprobe`,
  default 32) or `hnsw` (`hnsw_m` 32, `ef_construction` 40, `ef_search` 128, at least the
  quota at search). At 100,000 x 64 and a quota of 500, flat is exact in about 1.3 ms on
  one core: IVF and HNSW pay off for larger catalogues or smaller quotas (bench/recall.py);
- `dimension`: the vectors' length (default: the most common one among the items).

A user the feature does not know, or whose history has no indexed item, gets nothing; so does
a vector of zeros under cosine. A vector of another dimension than the index is
FAILED_PRECONDITION (the scene pairs a user feature with an item space it does not live in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    ItemSource,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from services.recommend.recall.history import recent_items
from services.recommend.recall.vector_index import (
    INDEX_TYPES,
    METRICS,
    IndexSpec,
    ItemVectors,
    VectorIndexes,
)
from shared.errors import InvalidArgument

PARAMS = (
    "feature_view",
    "feature",
    "user_vector",
    "user_history",
    "history_length",
    "metric",
    "index",
    "nlist",
    "nprobe",
    "hnsw_m",
    "ef_construction",
    "ef_search",
    "dimension",
)
DEFAULT_HISTORY_LENGTH = 20


@dataclass(frozen=True)
class VectorRecall:
    items: ItemSource
    vectors: VectorIndexes
    project: str
    feature_view: str
    feature: str
    spec: IndexSpec
    quota: int
    user_vector: str | None = None
    user_history: str | None = None
    history_length: int = DEFAULT_HISTORY_LENGTH

    @property
    def user_refs(self) -> tuple[str, ...]:
        return tuple(ref for ref in (self.user_vector, self.user_history) if ref)

    def recall(self, request: StageRequest) -> Sequence[str]:
        table = self.items.table(self.project, self.feature_view)
        index = self.vectors.get(self.project, table, self.feature, self.spec)
        query, exclude = self._query(request, index)
        if query is None:
            return []
        found = index.search(query, self.quota, exclude)
        if index.table is not table and found:
            # The index is being brought up to date: never return an item the view dropped.
            found = [item for item, row in zip(found, table.rows(found), strict=True) if row >= 0]
        return found

    def _query(
        self, request: StageRequest, index: ItemVectors
    ) -> tuple[np.ndarray | None, list[str]]:
        if self.user_vector is not None:
            value = request.user.get(self.user_vector)
            if value is None:
                return None, []
            return index.query(value, f"user feature {self.user_vector}"), []
        assert self.user_history is not None
        history = recent_items(request, self.user_history)
        vectors = index.vectors(history[: self.history_length])
        if not len(vectors):
            return None, history
        mean = vectors.mean(axis=0)
        return index.query(mean, f"the mean of {self.user_history}'s item vectors"), history


def spec_of(params: Params) -> IndexSpec:
    return IndexSpec(
        index=params.choice("index", INDEX_TYPES, "flat"),
        metric=params.choice("metric", METRICS, "inner_product"),
        nlist=params.whole("nlist", 0, low=0, high=1 << 20),
        nprobe=params.whole("nprobe", 32, low=1, high=1 << 20),
        hnsw_m=params.whole("hnsw_m", 32, low=4, high=128),
        ef_construction=params.whole("ef_construction", 40, low=8, high=4096),
        ef_search=params.whole("ef_search", 128, low=8, high=16384),
        dimension=params.whole("dimension", 0, low=0, high=65536),
    )


def _read(settings: StageSettings, path: str) -> dict[str, Any]:
    params = Params(settings.params, path, PARAMS)
    source = params.one_of("user_vector", "user_history")
    if source == "user_vector" and "history_length" in params.params:
        raise InvalidArgument(params.at("history_length"), "applies to `user_history` only")
    return {
        "feature_view": params.text("feature_view"),
        "feature": params.text("feature"),
        "spec": spec_of(params),
        source: ":".join(params.ref(source)),
        "history_length": params.whole("history_length", DEFAULT_HISTORY_LENGTH, low=1, high=1000),
    }


def _references(read: dict[str, Any]) -> list[str]:
    user = [read[key] for key in ("user_vector", "user_history") if key in read]
    return [f"{read['feature_view']}:{read['feature']}", *user]


def build(settings: StageSettings, context: BuildContext) -> VectorRecall:
    return VectorRecall(
        context.deps.items,
        context.deps.vectors,
        context.scene.project,
        quota=settings.quota,
        **_read(settings, "recall"),
    )


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RECALL,
    "vector",
    build,
    produces=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [settings.params["feature_view"]],
    references=lambda settings: _references(_read(settings, settings.name)),
)
