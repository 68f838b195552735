"""The evaluation's split of the ratings: the training issue's per-user temporal hold-out.

Each user's ratings, ordered by (time, item id), end with a test period of the last
round(0.2 x n) of them (`training.samples.split_by_user_time`, the split `recstack train`
holds out). Everything the evaluated stack sees (its sources, its jobs, its ranker) is built
from the training part; the test part gives each user's relevant items.

The validation slice the baselines tune on is the same split applied again to the training
part: each user's last 20% of training ratings are held out from a fit on the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.samples import EVENT_TS, split_by_user_time

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """The ratings of the training period and of the test period (same columns)."""

    train: pa.Table
    test: pa.Table


def temporal_split(ratings: pa.Table, test_fraction: float = TEST_FRACTION) -> Split:
    """Each user's last `test_fraction` of ratings by (time, item id) as the test period."""
    users = _int64(ratings, "user_id")
    items = _int64(ratings, "item_id")
    times = ratings.column("event_ts").cast(EVENT_TS).cast(pa.int64()).to_numpy()
    in_test = pa.array(split_by_user_time(users, times, items, test_fraction))
    return Split(ratings.filter(pc.invert(in_test)), ratings.filter(in_test))


def items_by_user(ratings: pa.Table) -> dict[int, set[int]]:
    """The distinct items each user rated."""
    found: dict[int, set[int]] = defaultdict(set)
    for user, item in zip(_int64(ratings, "user_id"), _int64(ratings, "item_id"), strict=True):
        found[int(user)].add(int(item))
    return dict(found)


def _int64(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.int64)
