"""The quickstart's data: the PAI-Rec training example (seeds/002) as recstack sources.

The seed trains a classifier on a CSV of impressions with columns user_id, item_id,
category_affinity, price, recency_score and clicked. Here the user-level values
(category_affinity, recency_score) and the item-level one (price) are feature tables the
platform materializes, and the impressions are the labelled rows; clicks follow a known
logistic rule plus noise, so a model that learns the rule beats guessing.

    python examples/quickstart/data/make_data.py [DIR]   # default: this directory
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30
USERS, ITEMS, IMPRESSIONS = 2_000, 500, 40_000
TEST_FRACTION = 0.2
SEED = 2026


def click_logit(affinity: np.ndarray, recency: np.ndarray, price: np.ndarray) -> np.ndarray:
    """The rule clicks follow (before noise): what a perfect model would score."""
    return 4.0 * affinity + 1.5 * recency - 0.03 * price - 1.0


def main(directory: Path = HERE) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    # Feature values exist from the start; impressions come later.
    known = [START - timedelta(days=1)]
    users = pa.table(
        {
            "user_id": np.arange(1, USERS + 1),
            "category_affinity": rng.beta(2, 3, USERS).round(4),
            "recency_score": rng.random(USERS).round(4),
            "event_ts": known * USERS,
        }
    )
    items = pa.table(
        {
            "item_id": np.arange(1, ITEMS + 1),
            "price": rng.lognormal(3.0, 0.8, ITEMS).round(2),
            "event_ts": known * ITEMS,
        }
    )
    user = rng.integers(1, USERS + 1, IMPRESSIONS)
    item = rng.integers(1, ITEMS + 1, IMPRESSIONS)
    seconds = np.sort(rng.integers(0, DAYS * 86_400, IMPRESSIONS))
    affinity = users.column("category_affinity").to_numpy()[user - 1]
    recency = users.column("recency_score").to_numpy()[user - 1]
    price = items.column("price").to_numpy()[item - 1]
    logit = click_logit(affinity, recency, price) + rng.normal(0, 1.0, IMPRESSIONS)
    impressions = pa.table(
        {
            "user_id": user,
            "item_id": item,
            "clicked": (rng.random(IMPRESSIONS) < 1 / (1 + np.exp(-logit))).astype(np.int64),
            "event_ts": pa.array(
                [START + timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", "UTC")
            ),
        }
    )
    for name, table in (("users", users), ("items", items)):
        pcsv.write_csv(table, directory / f"{name}.csv")
    # Training never sees the last days: the test rows are the latest impressions.
    split = int(IMPRESSIONS * (1 - TEST_FRACTION))
    pq.write_table(impressions.slice(0, split), directory / "train.parquet")
    pq.write_table(impressions.slice(split), directory / "test.parquet")
    rate = float(np.mean(impressions.column("clicked").to_numpy()))
    print(f"{USERS} users, {ITEMS} items, {IMPRESSIONS} impressions ({rate:.1%} clicked)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
