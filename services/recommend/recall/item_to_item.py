"""Recall `item_to_item`: items similar to the user's recent ones, from precomputed lists.

params:
- `feature_view`: an item view holding each item's similar items (e.g. the MovieLens
  `item_similar`, computed by a materialization job from co-rating);
- `items_feature` (default `similar_items`): their ids, ARRAY<INT64> or ARRAY<STRING>, best
  first; `scores_feature` (default `similar_scores`): their similarities, ARRAY<DOUBLE>;
- `user_history`: a user ARRAY<INT64|STRING> feature of recent item ids, newest first;
- `history_length` (default 50): how many of the newest history items are expanded;
- `recency_decay` (default 1, in (0, 1]): the i-th newest item's lists weigh decay^i.

An item's score is the sum, over the expanded history items listing it, of its similarity
times that item's weight; items of the history itself are left out; ties go by item id. A
history item without a list (a cold item) adds nothing; a user without history gets nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.recommend.item_cache import ItemTable
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
from shared.errors import FailedPrecondition, InvalidArgument
from shared.values import VT

PARAMS = (
    "feature_view",
    "items_feature",
    "scores_feature",
    "user_history",
    "history_length",
    "recency_decay",
)
ID_LISTS = frozenset({VT.VALUE_TYPE_INT64_LIST, VT.VALUE_TYPE_STRING_LIST})
SCORE_LISTS = frozenset({VT.VALUE_TYPE_DOUBLE_LIST, VT.VALUE_TYPE_FLOAT_LIST})
# One item's list: its similar items as codes into `_Lists.names`, and their scores.
Decoded = tuple[np.ndarray, np.ndarray]


class _Lists:
    """A table's similar-item lists, decoded as requests reach them, with item ids coded as
    integers: merging a history's lists then sorts numbers, not strings."""

    def __init__(self, table: ItemTable) -> None:
        self.table = table
        self.decoded: dict[int, Decoded] = {}
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, item_id: str) -> int:
        code = self.codes.get(item_id)
        if code is None:
            code = self.codes[item_id] = len(self.names)
            self.names.append(item_id)
        return code


class ItemToItemRecall:
    def __init__(
        self,
        items: ItemSource,
        project: str,
        quota: int,
        *,
        feature_view: str,
        items_feature: str,
        scores_feature: str,
        user_history: str,
        history_length: int,
        recency_decay: float,
    ) -> None:
        self._items = items
        self._project = project
        self._quota = quota
        self._view = feature_view
        self._items_feature = items_feature
        self._scores_feature = scores_feature
        self._history = user_history
        self._history_length = history_length
        self._decay = recency_decay
        # The current table's lists, decoded as requests reach them (tables never change).
        self._decoded: _Lists | None = None
        self._lock = threading.Lock()

    @property
    def user_refs(self) -> tuple[str, ...]:
        return (self._history,)

    def recall(self, request: StageRequest) -> Sequence[str]:
        history = recent_items(request, self._history)
        if not history:
            return []
        table = self._items.table(self._project, self._view)
        rows = table.rows(history[: self._history_length])
        decoded = self._decoded_of(table)
        lists = self._lists(decoded, rows[rows >= 0])
        weights = self._decay ** np.flatnonzero(rows >= 0)
        parts = [
            (ids, scores * weight) for (ids, scores), weight in zip(lists, weights, strict=True)
        ]
        parts = [(ids, scores) for ids, scores in parts if len(ids)]
        if not parts:
            return []
        candidates, inverse = np.unique(
            np.concatenate([ids for ids, _ in parts]), return_inverse=True
        )
        totals = np.bincount(inverse, weights=np.concatenate([s for _, s in parts]))
        seen = [code for item in history if (code := decoded.codes.get(item)) is not None]
        if seen:
            fresh = ~np.isin(candidates, seen)
            candidates, totals = candidates[fresh], totals[fresh]
        return _best(candidates, totals, decoded.names, self._quota)

    def _lists(self, decoded: _Lists, rows: np.ndarray) -> list[Decoded]:
        found = decoded.decoded
        missing = [int(row) for row in rows if int(row) not in found]
        if missing:
            index = np.asarray(missing, dtype=np.int64)
            ids = decoded.table.column(self._items_feature, index)
            scores = decoded.table.column(self._scores_feature, index)
            with self._lock:
                for row, row_ids, row_scores in zip(missing, ids, scores, strict=True):
                    names, values = _decode(row_ids, row_scores)
                    codes = np.fromiter(map(decoded.code, names), np.int64, len(names))
                    found[row] = (codes, values)
        return [found[int(row)] for row in rows]

    def _decoded_of(self, table: ItemTable) -> _Lists:
        current = self._decoded
        if current is not None and current.table is table:
            return current
        _check_types(table, self._items_feature, self._scores_feature)
        with self._lock:
            self._decoded = _Lists(table)
            return self._decoded


def _best(codes: np.ndarray, totals: np.ndarray, names: list[str], quota: int) -> list[str]:
    """The `quota` best by total, ties by item id; only the items at or above the quota's
    cut are sorted by id."""
    if quota <= 0:
        return []
    if len(codes) > quota:
        cut = totals[np.argpartition(-totals, quota - 1)[quota - 1]]
        keep = totals >= cut
        codes, totals = codes[keep], totals[keep]
    ranked = sorted(zip((-totals).tolist(), [names[code] for code in codes.tolist()], strict=True))
    return [name for _, name in ranked[:quota]]


def _decode(ids: Any, scores: Any) -> tuple[list[str], np.ndarray]:
    """One item's list as (ids as text, scores); a missing score counts 0, a list without
    scores counts 1 for each item."""
    if ids is None:
        return [], np.empty(0)
    names = [str(item) for item in ids if item is not None]
    if scores is None:
        return names, np.ones(len(names))
    values = np.asarray([0.0 if s is None else float(s) for s in scores], dtype=np.float64)
    count = min(len(names), len(values))
    return names[:count], np.nan_to_num(values[:count], nan=0.0)


def _check_types(table: ItemTable, items_feature: str, scores_feature: str) -> None:
    declared = {feature.name: feature.value_type for feature in table.view.features}
    for feature, allowed, what in (
        (items_feature, ID_LISTS, "ARRAY<INT64> or ARRAY<STRING>"),
        (scores_feature, SCORE_LISTS, "ARRAY<DOUBLE> or ARRAY<FLOAT>"),
    ):
        if feature not in declared:
            raise FailedPrecondition(
                f"feature view {table.view.name!r} has no feature {feature!r}; it has "
                f"{sorted(declared)}",
                reason="FEATURE_NOT_FOUND",
            )
        if declared[feature] not in allowed:
            raise FailedPrecondition(
                f"feature {table.view.name}:{feature} is {VT.Name(declared[feature])}; "
                f"item_to_item needs {what}",
                reason="FEATURE_TYPE_MISMATCH",
            )


def _read(settings: StageSettings, path: str) -> dict[str, Any]:
    params = Params(settings.params, path, PARAMS)
    decay = params.number("recency_decay", 1.0, low=0.0, high=1.0)
    if decay == 0:
        raise InvalidArgument(params.at("recency_decay"), "must be above 0 (1: no decay)")
    return {
        "feature_view": params.text("feature_view"),
        "items_feature": params.text("items_feature", "similar_items"),
        "scores_feature": params.text("scores_feature", "similar_scores"),
        "user_history": ":".join(params.ref("user_history")),
        "history_length": params.whole("history_length", 50, low=1, high=1000),
        "recency_decay": decay,
    }


def _references(read: dict[str, Any]) -> list[str]:
    view = read["feature_view"]
    return [
        f"{view}:{read['items_feature']}",
        f"{view}:{read['scores_feature']}",
        read["user_history"],
    ]


def build(settings: StageSettings, context: BuildContext) -> ItemToItemRecall:
    return ItemToItemRecall(
        context.deps.items, context.scene.project, settings.quota, **_read(settings, "recall")
    )


def check(settings: StageSettings, path: str) -> None:
    _read(settings, path)


STAGE = StageType(
    StageKind.RECALL,
    "item_to_item",
    build,
    produces=frozenset({ITEM_ID}),
    check=check,
    item_views=lambda settings: [settings.params["feature_view"]],
    references=lambda settings: _references(_read(settings, settings.name)),
)
