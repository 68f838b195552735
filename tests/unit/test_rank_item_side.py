"""The rank stage's split FG gives exactly the whole FG's tensors: the MovieLens ranker's
FG over real item tables, with items the tables lack, repeated requests served from the
per-row cache, and incremental refreshes that change, add and keep rows."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.recommend.item_cache import ItemTable
from services.recommend.rank.item_side import CandidateItems, SplitGenerator
from shared.feature_generator import AvailableFeature, FeatureGenerator
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.values import VT

NOW = datetime(2026, 12, 2, tzinfo=UTC)
FG = json.loads(
    (Path(__file__).resolve().parents[2] / "examples" / "movielens" / "fg.json").read_text()
)
GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller", "War"]
ATTRIBUTES = ViewSchema(
    "p", "movie_attributes", 1, "item_id", VT.VALUE_TYPE_INT64,
    (Feature("genres", VT.VALUE_TYPE_STRING_LIST), Feature("release_year", VT.VALUE_TYPE_INT64)),
)  # fmt: skip
POPULARITY = ViewSchema(
    "p", "item_popularity", 1, "item_id", VT.VALUE_TYPE_INT64,
    tuple(Feature(name, VT.VALUE_TYPE_DOUBLE)
          for name in ("item_ratings_30d", "item_ratings_365d", "item_mean_rating_365d")),
)  # fmt: skip
ITEM_INPUTS = {
    "item_id": AvailableFeature.key("item_id", "movie", VT.VALUE_TYPE_INT64),
    "genres": AvailableFeature("movie_attributes", "genres", "movie", VT.VALUE_TYPE_STRING_LIST),
    "release_year": AvailableFeature(
        "movie_attributes", "release_year", "movie", VT.VALUE_TYPE_INT64
    ),
    **{
        name: AvailableFeature("item_popularity", name, "movie", VT.VALUE_TYPE_DOUBLE)
        for name in ("item_ratings_30d", "item_ratings_365d", "item_mean_rating_365d")
    },
}


def attributes(rng: random.Random, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    return {
        i: {
            # Some movies have no genres or year (None), most share a few genre lists.
            "genres": rng.choice([None, [], *[rng.sample(GENRES, rng.randint(1, 3))] * 3]),
            "release_year": rng.choice([None, 1950, 1977, 1995, 1997]),
        }
        for i in ids
    }


def popularity(rng: random.Random, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    return {
        i: {
            "item_ratings_30d": float(rng.randint(0, 40)),
            "item_ratings_365d": rng.choice([None, float(rng.randint(0, 500))]),
            "item_mean_rating_365d": rng.choice([None, rng.uniform(1, 5)]),
        }
        for i in ids
    }


def scanned(view: ViewSchema, rows: dict[int, dict[str, Any]]) -> tuple[list[int], ViewColumns]:
    keys = list(rows)
    values = {f.name: [rows[k][f.name] for k in keys] for f in view.features}
    return keys, ViewColumns(values, [NOW] * len(keys))


def user(rng: random.Random) -> dict[str, Any]:
    return {
        "user_id": rng.randint(1, 943),
        "gender": rng.choice(["M", "F", None]),
        "occupation": rng.choice(["artist", "doctor", None]),
        "age": rng.choice([17, 33, None]),
        "user_ratings_365d": float(rng.randint(0, 300)),
        "user_mean_rating_365d": rng.choice([None, 3.7]),
        "genre_counts": rng.choice([None, {g: float(rng.randint(0, 9)) for g in GENRES[:4]}]),
        "recent_items": [rng.randint(1, 300) for _ in range(rng.randint(0, 25))],
    }


def candidates(tables: dict[str, ItemTable], item_ids: list[str]) -> CandidateItems:
    """A request's candidates over the tables, as the rank stage hands them to the FG."""

    def lookup(view: str, ids: list[str]) -> tuple[ItemTable, np.ndarray]:
        return tables[view], tables[view].rows(ids)

    return CandidateItems(np.asarray(item_ids, dtype=str), ITEM_INPUTS, lookup)


def both(
    split: SplitGenerator, items: CandidateItems, values: dict[str, Any], context: dict
) -> None:
    whole = split.generator.generate(
        values,
        items.columns(list(ITEM_INPUTS)),
        context,
        num_items=len(items),
        item_lookup=items.lookup,
    )
    parts = split.generate(values, context, items)
    assert list(parts) == list(whole)
    for name, array in whole.items():
        assert parts[name].dtype == array.dtype, name
        np.testing.assert_array_equal(parts[name], array, err_msg=name)


@pytest.fixture
def split() -> SplitGenerator:
    return SplitGenerator.split(FeatureGenerator.from_config(FG), ITEM_INPUTS)


def test_outputs_are_split_by_what_they_read(split):
    assert {view: g.output_names for view, g in split.per_row.items()} == {
        "movie_attributes": ("item_id", "genres", "release_year"),
        "item_popularity": ("item_ratings_30d", "item_ratings_365d", "item_mean_rating"),
    }
    assert [(f.name, f.view, f.column, f.generator.output_names) for f in split.per_value] == [
        ("genres", "movie_attributes", "genres", ("genre_affinity",)),
        ("genres", "movie_attributes", "genres", ("gender_genres",)),
    ]
    assert split.rest is not None
    assert set(split.rest.output_names) == {
        "user_id", "gender", "occupation", "age", "user_ratings", "user_mean_rating",
        "history", *[n for n in split.generator.output_names if n.startswith("history")],
    }  # fmt: skip


def test_equals_the_whole_fg_over_requests_and_refreshes(split):
    rng = random.Random(7)
    ids = list(range(1, 301))
    tables = {
        view.name: ItemTable.from_scan(view, *scanned(view, rows(rng, ids)), NOW)
        for view, rows in ((ATTRIBUTES, attributes), (POPULARITY, popularity))
    }
    for round_ in range(6):
        for _ in range(4):
            # Candidates: mostly cached movies, some the tables lack, a repeat or two.
            item_ids = [str(rng.randint(1, 330)) for _ in range(rng.randint(1, 120))]
            both(split, candidates(tables, item_ids), user(rng), {"hour": round_})
        # An incremental refresh: some rows change, some new movies arrive.
        changed = rng.sample(ids, 30) + list(range(301 + 5 * round_, 306 + 5 * round_))
        tables = {
            view.name: tables[view.name].merged(*scanned(view, rows(rng, changed)), NOW)
            for view, rows in ((ATTRIBUTES, attributes), (POPULARITY, popularity))
        }


def test_an_empty_request_and_a_request_of_unknown_items(split):
    rng = random.Random(3)
    tables = {
        view.name: ItemTable.from_scan(view, *scanned(view, rows(rng, [1, 2])), NOW)
        for view, rows in ((ATTRIBUTES, attributes), (POPULARITY, popularity))
    }
    both(split, candidates(tables, ["404", "405"]), user(rng), {})
    both(split, candidates(tables, ["1", "404", "1"]), user(rng), {})
