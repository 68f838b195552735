"""The trained ranker's item embeddings as a Parquet file, for the `vector` recall.

A `dnn` learns one embedding row per item id (the FG's id feature, shared with the history
sequence through its `embedding_name`); each item's row is where the model places it among
the others, and the candidate and the history meet in that space through DIN's attention.
This writes that row for every item of the training and test rows, indexed exactly as the
FG indexes the id online (the same entry of the same document), so a FILE source and a BATCH
view publish them and the vector recall indexes them like any item feature:

    item_id INT64 | STRING, embedding list<float32>, event_ts (the end of the training rows)

Hashed ids share rows: items whose ids fall in one bucket get one vector (1,682 movies in
4,000 buckets: 531 movies share 250 rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.feature_generator import ID, FeatureConfigError, FeatureGenerator, TensorSpec


def fg_entry(fg_config: Mapping[str, Any], feature: str) -> dict[str, Any]:
    """The FG entry of the id feature `feature` (FeatureConfigError when there is none)."""
    for index, entry in enumerate(fg_config.get("features", [])):
        if entry.get("feature_name") == feature:
            if entry.get("feature_type") != "id_feature":
                raise FeatureConfigError(
                    f"features[{index}]", f"{feature!r} is not an id_feature: it has no rows"
                )
            return dict(entry)
    raise FeatureConfigError("features", f"no feature is named {feature!r}")


def item_rows(fg_config: Mapping[str, Any], feature: str, item_ids: np.ndarray) -> np.ndarray:
    """The embedding row of each item id, as the FG indexes it (-1: none)."""
    generator = FeatureGenerator.from_config({"features": [fg_entry(fg_config, feature)]})
    (spec,) = (s for s in generator.signature if s.name == feature)
    (ref,) = generator.inputs
    outputs = generator.generate({}, {ref.name: item_ids.tolist()}, num_items=len(item_ids))
    return outputs[spec.name].reshape(len(item_ids), -1)[:, 0].astype(np.int64)


def table_of(signature: tuple[TensorSpec, ...], feature: str) -> str:
    (spec,) = (s for s in signature if s.name == feature and s.kind == ID)
    return spec.table


def write(
    path: Path,
    item_key: str,
    item_ids: np.ndarray,
    vectors: np.ndarray,
    event_time: datetime,
    key_type: pa.DataType,
) -> Path:
    """The file, replaced whole (a reader never sees half of it)."""
    table = pa.table(
        {
            item_key: pa.array(item_ids, type=key_type),
            "embedding": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())),
            "event_ts": pa.array([event_time] * len(item_ids), pa.timestamp("us", tz="UTC")),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    partial.replace(path)
    return path
