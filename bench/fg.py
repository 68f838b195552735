"""The feature generator on one ranking request: 500 items by the MovieLens feature set.

Inputs are the MovieLens-100k values the online path hands the FG (`make movielens-data`):
per item the movie's genres and release year and its rating counts and mean, per user the
profile, the per-genre counts and the last 50 rated movies; the FG is the `dnn` model's
(`examples/movielens/fg.json`: ids, bucketized and normalized numbers, a lookup, a combo and
a history with a side feature). Each call takes a random user and 500 random movies.

- `fg_500`: `FeatureGenerator.generate` for the 500 items, all 16 tensors (`us_per_item`);
- `fg_500_online`: the same outputs as the rank stage computes them
  (`services.recommend.rank.item_side`): item-only outputs from the per-row cache of the item
  tables, user x item crosses once per distinct item value, the rest per request; warm, as
  a serving process runs after its first requests;
- `gather_500`: the bare part under it, gathering the same item columns by row from the
  columnar item table (what the item cache does before the FG runs).
Interleaved in blocks after a warm-up; prints a table and writes bench/results/fg.json.

    python -m bench.fg [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq

from bench.harness import REPO_ROOT, latency_figure, print_table, write_result
from services.recommend.item_cache import ItemTable
from services.recommend.rank.item_side import CandidateItems, SplitGenerator
from shared.feature_generator import AvailableFeature, FeatureGenerator
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.values import VT

NAME = "fg"
EXAMPLE = REPO_ROOT / "examples" / "movielens"
ITEMS_PER_CALL = 500
BLOCK = 50


class Catalogue:
    """MovieLens items as columns (the item cache's layout) and users as dicts."""

    def __init__(self) -> None:
        data = EXAMPLE / "data"
        movies = pq.read_table(data / "movies.parquet")
        ratings = pq.read_table(data / "ratings.parquet").sort_by("event_ts")
        users = pq.read_table(data / "users.parquet")
        self.ids = movies.column("item_id").to_numpy()
        self.ids_text = np.asarray([str(i) for i in self.ids.tolist()], dtype=str)
        counts = Counter(ratings.column("item_id").to_pylist())
        means = _means(ratings)
        self.columns: dict[str, np.ndarray] = {
            "genres": _objects(movies.column("genres").to_pylist()),
            # float64 with NaN for missing, as the item cache keeps numbers.
            "release_year": movies.column("release_year")
            .to_numpy(zero_copy_only=False)
            .astype(np.float64),
            "item_ratings_30d": np.array([counts[i] / 7 for i in self.ids.tolist()]),
            "item_ratings_365d": np.array([float(counts[i]) for i in self.ids.tolist()]),
            "item_mean_rating_365d": np.array([means.get(i, np.nan) for i in self.ids.tolist()]),
        }
        self.index = {item: row for row, item in enumerate(self.ids_text.tolist())}
        self.users = _users(
            users,
            ratings,
            dict(zip(self.ids.tolist(), movies.column("genres").to_pylist(), strict=True)),
        )

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index.get(i, -1) for i in item_ids), np.int64, len(item_ids))

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: column[rows] for name, column in self.columns.items()}

    def lookup(self, name: str, ids: Sequence[str]) -> list[Any]:
        return self.columns[name][self.rows(ids)].tolist()


class OnlineFG:
    """The catalogue as the item cache's tables (attributes, popularity) and the FG split as
    the rank stage runs it over them."""

    VIEWS: ClassVar[dict[str, dict[str, int]]] = {
        "movie_attributes": {
            "genres": VT.VALUE_TYPE_STRING_LIST,
            "release_year": VT.VALUE_TYPE_DOUBLE,
        },
        "item_popularity": dict.fromkeys(
            ("item_ratings_30d", "item_ratings_365d", "item_mean_rating_365d"),
            VT.VALUE_TYPE_DOUBLE,
        ),
    }

    def __init__(self, catalogue: Catalogue, generator: FeatureGenerator) -> None:
        now = datetime.now(UTC)
        self.tables: dict[str, ItemTable] = {}
        inputs = {"item_id": AvailableFeature.key("item_id", "movie", VT.VALUE_TYPE_INT64)}
        for view_id, features in self.VIEWS.items():
            fields = tuple(Feature(name, kind) for name, kind in features.items())
            view = ViewSchema("bench", view_id, 1, "item_id", VT.VALUE_TYPE_INT64, fields)
            values = {name: catalogue.columns[name].tolist() for name in features}
            scan = ViewColumns(values, [now] * len(catalogue.ids))
            self.tables[view_id] = ItemTable.from_scan(view, catalogue.ids.tolist(), scan, now)
            inputs |= {n: AvailableFeature(view_id, n, "movie", k) for n, k in features.items()}
        self.inputs = inputs
        self.split = SplitGenerator.split(generator, inputs)

    def generate(self, user: dict[str, Any], items: list[str]) -> None:
        def lookup(view: str, ids: list[str]) -> tuple[ItemTable, np.ndarray]:
            return self.tables[view], self.tables[view].rows(ids)

        candidates = CandidateItems(np.asarray(items), self.inputs, lookup)
        self.split.generate(user, {}, candidates)


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _means(ratings: Any) -> dict[int, float]:
    totals: dict[int, list[float]] = defaultdict(list)
    for item, rating in zip(
        ratings.column("item_id").to_pylist(), ratings.column("rating").to_pylist(), strict=True
    ):
        totals[item].append(rating)
    return {item: float(np.mean(values)) for item, values in totals.items()}


def _users(users: Any, ratings: Any, genres: dict[int, list[str]]) -> list[dict[str, Any]]:
    history: dict[int, list[int]] = defaultdict(list)
    for user, item in zip(
        ratings.column("user_id").to_pylist(), ratings.column("item_id").to_pylist(), strict=True
    ):
        history[user].append(item)
    found = []
    for row in users.to_pylist():
        items = history[row["user_id"]]
        counts = Counter(genre for item in items for genre in genres[item])
        found.append(
            {
                "user_id": row["user_id"],
                "age": row["age"],
                "gender": row["gender"],
                "occupation": row["occupation"],
                "user_ratings_365d": len(items),
                "user_mean_rating_365d": 3.5,
                "genre_counts": {genre: float(n) for genre, n in counts.items()},
                "recent_items": items[::-1][:50],
            }
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    catalogue = Catalogue()
    generator = FeatureGenerator.from_config(json.loads((EXAMPLE / "fg.json").read_text()))
    rng = np.random.default_rng(20261202)

    def request() -> tuple[dict[str, Any], list[str]]:
        user = catalogue.users[rng.integers(len(catalogue.users))]
        items = catalogue.ids_text[rng.choice(len(catalogue.ids_text), ITEMS_PER_CALL)]
        return user, items.tolist()

    def gather(user: dict[str, Any], items: list[str]) -> None:
        catalogue.gather(catalogue.rows(items))

    def fg(user: dict[str, Any], items: list[str]) -> None:
        columns = catalogue.gather(catalogue.rows(items))
        columns["item_id"] = np.asarray(items)
        generator.generate(user, columns, item_lookup=catalogue.lookup)

    online = OnlineFG(catalogue, generator)
    variants = {"gather_500": gather, "fg_500": fg, "fg_500_online": online.generate}
    timings = _interleaved(variants, request, args.calls)
    figures = {name: latency_figure(seconds) for name, seconds in timings.items()}
    for name in ("fg_500", "fg_500_online"):
        fg_p50 = figures[name]["p50_ms"] - figures["gather_500"]["p50_ms"]
        figures[name]["us_per_item"] = round(fg_p50 * 1000 / ITEMS_PER_CALL, 3)
    gather_p50 = figures["gather_500"]["p50_ms"]
    ratios = {
        "fg_500_vs_gather_500": figures["fg_500"]["p50_ms"] / gather_p50,
        "fg_500_online_vs_gather_500": figures["fg_500_online"]["p50_ms"] / gather_p50,
    }
    print_table(figures, ratios, {})
    for name in ("fg_500", "fg_500_online"):
        print(f"\n{name}: {figures[name]['us_per_item']} µs per item (p50, gather excluded)")
    path = write_result(NAME, figures, ratios, {}, {"items_per_call": ITEMS_PER_CALL})
    print(f"wrote {path}")
    return 0


def _interleaved(
    variants: dict[str, Callable[[dict[str, Any], list[str]], None]],
    request: Callable[[], tuple[dict[str, Any], list[str]]],
    calls: int,
) -> dict[str, list[float]]:
    """Each variant on the same requests, in alternating blocks, after a warm-up."""
    timings: dict[str, list[float]] = {name: [] for name in variants}
    warmup = [request() for _ in range(BLOCK)]
    for function in variants.values():
        for user, items in warmup:
            function(user, items)
    for _ in range(calls // BLOCK):
        block = [request() for _ in range(BLOCK)]
        for name, function in variants.items():
            for user, items in block:
                started = time.perf_counter()
                function(user, items)
                timings[name].append(time.perf_counter() - started)
    return timings


if __name__ == "__main__":
    raise SystemExit(main())
