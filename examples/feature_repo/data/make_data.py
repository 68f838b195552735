"""Writes the example repository's Parquet tables; deterministic, so a rerun changes nothing.

`python examples/feature_repo/data/make_data.py` from anywhere. Three days of daily snapshots
of 100 users and 100 items, values rounded so the committed files stay a few kilobytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 3
KEYS = 100
CATEGORIES = ("books", "electronics", "garden", "grocery", "music", "sports", "toys")

Row = dict[str, object]


def user_row(rng: random.Random) -> Row:
    return {
        "age_norm": round(rng.random(), 3),
        "activity": round(rng.random(), 3),
        "price_affinity": round(rng.random(), 3),
    }


def item_row(rng: random.Random) -> Row:
    return {
        "popularity": round(rng.random(), 3),
        "price_norm": round(rng.random(), 3),
        "rating": round(rng.uniform(1, 5), 1),
        "ctr": round(rng.uniform(0, 0.2), 3),
        "category": rng.choice(CATEGORIES),
    }


def snapshots(key: str, features: Callable[[random.Random], Row], seed: int) -> pa.Table:
    """One row per key per day, at a random second of that day."""
    rng = random.Random(seed)
    rows = [
        {
            key: key_value,
            "event_ts": DAY0 + timedelta(days=day, seconds=rng.randrange(86400)),
            **features(rng),
        }
        for day in range(DAYS)
        for key_value in range(1, KEYS + 1)
    ]
    table = pa.Table.from_pylist(rows)
    return table.set_column(
        1, "event_ts", table.column("event_ts").cast(pa.timestamp("us", tz="UTC"))
    )


def main(directory: Path = HERE) -> None:
    pq.write_table(snapshots("user_id", user_row, seed=1), directory / "users.parquet")
    pq.write_table(snapshots("item_id", item_row, seed=2), directory / "items.parquet")


if __name__ == "__main__":
    main()
