"""Items ranked by a popularity feature, over the whole catalogue and within each category.

Shared by `popular` and `category_affinity`. The popularity is a numeric item feature that a
job computes over a recent window (the MovieLens `item_popularity:item_ratings_30d`); the
category is an item STRING or ARRAY<STRING> feature (a multi-valued one, such as a movie's
genres, ranks the item in each of its categories). Rankings are built once per pair of item
tables and kept with them, so a request costs a slice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from services.recommend.item_cache import ItemTable
from services.recommend.pipeline import ItemSource


@dataclass(frozen=True)
class Rankings:
    popularity: ItemTable
    categories: ItemTable | None
    # Every item with a popularity value, most popular first (ties by id).
    overall: list[str]
    by_category: dict[str, list[str]] = field(default_factory=dict)

    def ranked(self, category: str | None = None) -> list[str]:
        if category is None:
            return self.overall
        return self.by_category.get(category, [])


class PopularityRankings:
    """The rankings of one (popularity, category) pair of features, for the current tables."""

    def __init__(
        self, items: ItemSource, project: str, popularity: str, category: str | None
    ) -> None:
        self._items = items
        self._project = project
        self._popularity = _split(popularity)
        self._category = _split(category) if category else None
        self._current: Rankings | None = None
        self._lock = threading.Lock()

    def get(self) -> Rankings:
        popularity = self._items.table(self._project, self._popularity[0])
        categories = self._items.table(self._project, self._category[0]) if self._category else None
        current = self._current
        if current is not None and _same(current, popularity, categories):
            return current
        with self._lock:
            current = self._current
            if current is None or not _same(current, popularity, categories):
                current = self._current = self._rank(popularity, categories)
            return current

    def _rank(self, popularity: ItemTable, categories: ItemTable | None) -> Rankings:
        overall = popularity.top(self._popularity[1], len(popularity))
        if categories is None or self._category is None:
            return Rankings(popularity, None, overall)
        values = categories.column(self._category[1], categories.rows(overall))
        by_category: dict[str, list[str]] = {}
        for item, value in zip(overall, values, strict=True):
            for category in _categories(value):
                by_category.setdefault(category, []).append(item)
        return Rankings(popularity, categories, overall, by_category)


def _split(ref: str) -> tuple[str, str]:
    view, _, feature = ref.partition(":")
    return view, feature


def _same(current: Rankings, popularity: ItemTable, categories: ItemTable | None) -> bool:
    return current.popularity is popularity and current.categories is categories


def _categories(value: object) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return list(dict.fromkeys(_name(v) for v in value if v is not None))
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [_name(value)]


def _name(value: object) -> str:
    # Numeric item columns are float64 in the cache; an INT64 category 3 is "3", as a map key.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
