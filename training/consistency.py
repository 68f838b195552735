"""Offline/online consistency of a model's features (`recstack fg check`).

For sampled (user, item) pairs, the model inputs are generated twice and compared bit for bit:
- offline, the training way: the pairs as labelled rows at one snapshot time, joined with
  their features by ExportTrainingSet (point in time, from the offline store), then the FG;
- online, the serving way: the recommend service's Score with debug level 1, which reads the
  user's features from serving (the online store), the items' from its item cache, and runs
  the same FG.
Any difference is training/serving skew: a stale online store, a materialization that wrote
the two stores differently, or a value that changes type on the way. Each mismatch names the
pair, the tensor and both values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.feature_generator import FeatureGenerator
from training.data import FeatureColumns, SnapshotLookup

# Online scores are asked for this many items of one user per call.
ITEMS_PER_USER = 20


@dataclass(frozen=True)
class Pair:
    user: str
    item: str


@dataclass(frozen=True)
class Mismatch:
    pair: Pair
    tensor: str
    offline: list[float | int]
    online: list[float | int]

    def __str__(self) -> str:
        return (
            f"user {self.pair.user} item {self.pair.item}: {self.tensor} offline "
            f"{self.offline} online {self.online}"
        )


@dataclass(frozen=True)
class Report:
    rows: int
    tensors: int
    mismatches: list[Mismatch]


Export = Callable[..., int]
# (user id, item ids) → per item, tensor name → that item's row of the tensor.
Score = Callable[[str, Sequence[str]], list[dict[str, np.ndarray]]]


def sample_pairs(
    snapshot: pa.Table, user_key: str, item_key: str, rows: int, seed: int
) -> list[Pair]:
    """`rows` pairs of keys present at the snapshot: ITEMS_PER_USER items each for
    rows / ITEMS_PER_USER users, all drawn uniformly."""
    users = _keys(snapshot, user_key)
    items = _keys(snapshot, item_key)
    if not users or not items:
        raise ValueError("the snapshot has no users or no items: nothing to compare")
    rng = np.random.default_rng(seed)
    per_user = min(ITEMS_PER_USER, len(items))
    count = max(1, -(-rows // per_user))
    chosen = rng.choice(len(users), size=min(count, len(users)), replace=False)
    return [
        Pair(users[u], items[i])
        for u in chosen.tolist()
        for i in rng.choice(len(items), size=per_user, replace=False).tolist()
    ]


def labelled_rows(
    pairs: Sequence[Pair], user_key: str, item_key: str, at: datetime, path: Path
) -> Path:
    """The pairs as ExportTrainingSet entity rows, all at `at`."""
    table = pa.table(
        {
            user_key: pa.array([int(p.user) for p in pairs], pa.int64()),
            item_key: pa.array([int(p.item) for p in pairs], pa.int64()),
            "event_ts": pa.array([at] * len(pairs), pa.timestamp("us", "UTC")),
        }
    )
    pq.write_table(table, path)
    return path


def offline(
    generator: FeatureGenerator,
    columns: FeatureColumns,
    exported: pa.Table,
    lookup: SnapshotLookup | None,
) -> dict[str, np.ndarray]:
    return generator.generate_rows(columns.inputs(exported), exported.num_rows, item_lookup=lookup)


def online(pairs: Sequence[Pair], score: Score) -> list[dict[str, np.ndarray]]:
    """Each pair's generated tensors through Score, one call per user."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_user[pair.user].append(index)
    found: list[dict[str, np.ndarray]] = [{} for _ in pairs]
    for user, indices in by_user.items():
        for index, generated in zip(
            indices, score(user, [pairs[i].item for i in indices]), strict=True
        ):
            found[index] = generated
    return found


def compare(
    pairs: Sequence[Pair],
    offline_tensors: Mapping[str, np.ndarray],
    online_rows: Sequence[Mapping[str, np.ndarray]],
) -> Report:
    mismatches = []
    for row, pair in enumerate(pairs):
        for name, tensor in offline_tensors.items():
            expected = tensor[row].reshape(-1)
            got = online_rows[row].get(name)
            if got is None or got.dtype != expected.dtype or got.tobytes() != expected.tobytes():
                mismatches.append(
                    Mismatch(
                        pair,
                        name,
                        expected.tolist(),
                        [] if got is None else got.reshape(-1).tolist(),
                    )
                )
    return Report(len(pairs), len(offline_tensors), mismatches)


def _keys(snapshot: pa.Table, key: str) -> list[str]:
    column = snapshot.column(key)
    present = pc.unique(column.filter(pc.is_valid(column))).to_pylist()
    return sorted(str(value) for value in present)
