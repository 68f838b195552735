"""Labelled impressions from a ratings log, split per user by time, as entity rows to export.

Every rating is a positive impression (`clicked` = 1, `converted` = rating >= a threshold).
For each positive, `negatives` items are drawn uniformly, without repetition, from the
catalogue items the user had not rated *by that time* (at or before it): they stand for
impressions that got no click. An item the user rates only later is a legitimate negative
at that moment; excluding it would let the future shape the training labels.

Split: each user's ratings, ordered by (time, item id), end with a test period of
round(test_fraction x n) of them (rounded half up); the test period's positives and their
negatives are the test set, the rest the training set. Every training row of a user is
therefore at or before their first test event, and a training row never sees a test event.

Timestamps: a row's `event_ts` is the rating's time minus one microsecond. ExportTrainingSet
joins each row with the feature values of the latest event at or before the row's time, and
the windowed aggregations at an event include that event itself (their frame is
(t - window, t]). Joined at t, a positive's `recent_items` would contain its own item and its
counts would include its own rating; at t - 1 µs the features are those of the user's and
the item's last events strictly before t (at microsecond resolution), as a model serving that
impression would have seen them. Other ratings at the same instant are excluded alike.

Deterministic: the same ratings (in any row order), settings and seed give the same rows.
`python -m training.samples RATINGS.parquet OUTPUT_DIR` writes `train.parquet` and
`test.parquet` there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

RATING_COLUMNS = ("user_id", "item_id", "rating", "event_ts")
EVENT_TS = pa.timestamp("us", tz="UTC")
SAMPLE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_ts", EVENT_TS),
        ("clicked", pa.int64()),
        ("converted", pa.int64()),
        # Null for negatives: no rating was given.
        ("rating", pa.int64()),
    ]
)
# How far before its event a row is joined: strictly before, at the store's resolution.
JOIN_OFFSET_US = 1
# Rejection rounds before giving up; each round keeps a candidate with probability at least
# (available - negatives) / catalogue, checked to be positive before sampling starts.
MAX_ROUNDS = 1_000

Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SampleConfig:
    """`negatives` per positive; `test_fraction` of each user's ratings are the test period;
    a rating converts when it is at least `conversion_rating`."""

    negatives: int = 4
    test_fraction: float = 0.2
    conversion_rating: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives < 0:
            raise ValueError(f"negatives must be 0 or more, not {self.negatives}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), not {self.test_fraction}")


@dataclass(frozen=True)
class Samples:
    """Train and test entity rows in `SAMPLE_SCHEMA`, each in time order, every positive
    followed by its negatives."""

    train: pa.Table
    test: pa.Table


@dataclass(frozen=True)
class SamplePaths:
    train: Path
    test: Path
    train_rows: int
    test_rows: int


def read_ratings(path: Path | str) -> pa.Table:
    """The columns samples need from a ratings Parquet file (user_id, item_id, rating,
    event_ts)."""
    table = pq.read_table(path, columns=list(RATING_COLUMNS))
    return table.cast(
        pa.schema(
            [
                ("user_id", pa.int64()),
                ("item_id", pa.int64()),
                ("rating", pa.int64()),
                ("event_ts", EVENT_TS),
            ]
        )
    )


def build_samples(
    ratings: pa.Table,
    config: SampleConfig | None = None,
    catalogue: Sequence[int] | npt.NDArray[np.integer] | None = None,
) -> Samples:
    """Positives, negatives and the split of `ratings` (see the module docstring).

    `catalogue` is the item ids negatives are drawn from; default: every rated item.
    """
    config = config or SampleConfig()
    users, items, stars, times = _columns(ratings)
    order = np.lexsort((items, times, users))
    users, items, stars, times = users[order], items[order], stars[order], times[order]
    catalogue_ids = np.unique(items if catalogue is None else np.asarray(catalogue, np.int64))
    if not np.isin(items, catalogue_ids).all():
        raise ValueError("some rated items are not in the catalogue")
    test = split_by_user_time(users, times, items, config.test_fraction)
    rng = np.random.default_rng(config.seed)
    negatives = sample_negatives(users, items, times, catalogue_ids, config.negatives, rng)
    rows = _impressions(users, items, stars, times, negatives, config.conversion_rating)
    in_test = np.repeat(test, config.negatives + 1)
    return Samples(_time_ordered(rows.filter(~in_test)), _time_ordered(rows.filter(in_test)))


def split_by_user_time(
    users: Int64s, times: Int64s, items: Int64s, test_fraction: float
) -> npt.NDArray[np.bool_]:
    """Whether each rating is in its user's test period: the user's last
    round(test_fraction x n) ratings by (time, item id)."""
    order = np.lexsort((items, times, users))
    sorted_users = users[order]
    _, starts, counts = np.unique(sorted_users, return_index=True, return_counts=True)
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    test_counts = np.floor(counts * test_fraction + 0.5).astype(np.int64)
    in_test = np.empty(len(users), dtype=bool)
    in_test[order] = rank >= np.repeat(counts - test_counts, counts)
    return in_test


def sample_negatives(
    users: Int64s,
    items: Int64s,
    times: Int64s,
    catalogue: Int64s,
    negatives: int,
    rng: np.random.Generator,
) -> Int64s:
    """For each rating j, `negatives` distinct catalogue items that users[j] had not rated
    at or before times[j]: an array of shape (len(users), negatives)."""
    ratings = _RatingIndex(users, items, times, catalogue)
    ratings.require_available(negatives)
    drawn = rng.integers(0, len(catalogue), size=(len(users), negatives))
    for _ in range(MAX_ROUNDS):
        rejected = ratings.rated_by(drawn) | _repeated_in_row(drawn)
        if not rejected.any():
            return catalogue[drawn]
        drawn[rejected] = rng.integers(0, len(catalogue), size=int(rejected.sum()))
    raise RuntimeError(f"negative sampling did not settle in {MAX_ROUNDS} rounds")


class _RatingIndex:
    """For every rating j at once: had rating j's user rated item x by rating j's time?

    A (user, item) pair is packed into one integer, user index x catalogue size + item index,
    and kept sorted with the time the user first rated the item.
    """

    def __init__(self, users: Int64s, items: Int64s, times: Int64s, catalogue: Int64s) -> None:
        self._size = len(catalogue)
        self._user_ids, self._user_index = np.unique(users, return_inverse=True)
        self._times = times
        pairs = self._user_index * self._size + np.searchsorted(catalogue, items)
        order = np.lexsort((times, pairs))
        self._pairs, first = np.unique(pairs[order], return_index=True)
        self._first_time = times[order][first]

    def rated_by(self, drawn: Int64s) -> npt.NDArray[np.bool_]:
        """Whether rating j's user had rated catalogue item drawn[j, c] by rating j's time."""
        packed = self._user_index[:, None] * self._size + drawn
        position = np.minimum(np.searchsorted(self._pairs, packed), len(self._pairs) - 1)
        found = self._pairs[position] == packed
        return found & (self._first_time[position] <= self._times[:, None])

    def rated_counts(self) -> Int64s:
        """How many distinct items rating j's user had rated by rating j's time."""
        # (user, time) pairs as one sortable integer: times replaced by their rank.
        _, ranks = np.unique(np.concatenate([self._first_time, self._times]), return_inverse=True)
        base = int(ranks.max()) + 1
        first_keys = np.sort(self._pairs // self._size * base + ranks[: len(self._pairs)])
        query = self._user_index * base + ranks[len(self._pairs) :]
        user_start = np.searchsorted(first_keys, self._user_index * base)
        return np.searchsorted(first_keys, query, side="right") - user_start

    def require_available(self, negatives: int) -> None:
        """Every rating's user must have `negatives` unrated items left at its time."""
        available = self._size - self.rated_counts()
        short = available < negatives
        if short.any():
            j = int(np.argmax(short))
            raise ValueError(
                f"user {self._user_ids[self._user_index[j]]} has {available[j]} unrated "
                f"catalogue items at one of their ratings; {negatives} negatives are asked"
            )


def _repeated_in_row(drawn: Int64s) -> npt.NDArray[np.bool_]:
    """Each draw that repeats an earlier one of its row (so a row's negatives are distinct)."""
    repeated = np.zeros(drawn.shape, dtype=bool)
    for column in range(1, drawn.shape[1]):
        repeated[:, column] = (drawn[:, :column] == drawn[:, column : column + 1]).any(axis=1)
    return repeated


def _columns(ratings: pa.Table) -> tuple[Int64s, Int64s, Int64s, Int64s]:
    missing = [name for name in RATING_COLUMNS if name not in ratings.column_names]
    if missing:
        raise ValueError(f"the ratings lack columns {missing}")
    for name in RATING_COLUMNS:
        if ratings.column(name).null_count:
            raise ValueError(f"the ratings' {name!r} has nulls")
    users = ratings.column("user_id").to_numpy().astype(np.int64)
    items = ratings.column("item_id").to_numpy().astype(np.int64)
    stars = ratings.column("rating").to_numpy().astype(np.int64)
    times = ratings.column("event_ts").cast(EVENT_TS).cast(pa.int64()).to_numpy()
    return users, items, stars, times


def _impressions(
    users: Int64s,
    items: Int64s,
    stars: Int64s,
    times: Int64s,
    negatives: Int64s,
    conversion_rating: int,
) -> pa.Table:
    """One positive row per rating, each followed by its negatives' rows."""
    width = negatives.shape[1] + 1
    shown = np.concatenate([items[:, None], negatives], axis=1).reshape(-1)
    positive = np.zeros((len(users), width), dtype=bool)
    positive[:, 0] = True
    positive = positive.reshape(-1)
    converted = np.repeat(stars >= conversion_rating, width) & positive
    rating = pa.array(np.repeat(stars, width), mask=~positive)
    row_ts = np.repeat(times - JOIN_OFFSET_US, width)
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat(users, width)),
            pa.array(shown),
            pa.array(row_ts).cast(pa.timestamp("us")).cast(EVENT_TS),
            pa.array(positive.astype(np.int64)),
            pa.array(converted.astype(np.int64)),
            rating,
        ],
        schema=SAMPLE_SCHEMA,
    )


def _time_ordered(rows: pa.Table) -> pa.Table:
    """Rows by time then user; a stable sort keeps each positive before its negatives, and
    each user's ratings at one instant in item order."""
    return rows.sort_by([("event_ts", "ascending"), ("user_id", "ascending")])


def write_samples(
    ratings_path: Path | str, output_dir: Path | str, config: SampleConfig | None = None
) -> SamplePaths:
    """`train.parquet` and `test.parquet` under `output_dir`, from a ratings Parquet file."""
    samples = build_samples(read_ratings(ratings_path), config)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in (("train", samples.train), ("test", samples.test)):
        path = output / f"{name}.parquet"
        partial = output / f".{name}.parquet.tmp"
        pq.write_table(table, partial, compression="zstd")
        partial.replace(path)
        paths[name] = path
    return SamplePaths(paths["train"], paths["test"], samples.train.num_rows, samples.test.num_rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.samples",
        description="Write labelled train/test entity rows (positives and sampled negatives).",
    )
    parser.add_argument(
        "ratings", type=Path, help="ratings Parquet (user_id, item_id, rating, event_ts)"
    )
    parser.add_argument("output_dir", type=Path, help="where train.parquet and test.parquet go")
    defaults = SampleConfig()
    parser.add_argument("--negatives", type=int, default=defaults.negatives)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--conversion-rating", type=int, default=defaults.conversion_rating)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = SampleConfig(args.negatives, args.test_fraction, args.conversion_rating, args.seed)
    written = write_samples(args.ratings, args.output_dir, config)
    print(f"wrote {written.train} ({written.train_rows:,} rows)")
    print(f"wrote {written.test} ({written.test_rows:,} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
