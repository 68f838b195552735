"""Exported training sets → FG inputs.

`ExportTrainingSet` writes the labelled rows' own columns plus one column per feature of the
model feature set, named `{view}__{feature}` (see the materialization service's export). Binding
the FG to the feature set (`shared.feature_generator.bind_inputs`) says which of those columns
each FG input reads; context inputs are columns of the labelled rows with the input's name.

Arrow columns become the shapes the FG reads online too: numeric columns as float64 with NaN
for nulls, lists as arrays, maps as (key, value) pairs, text as objects with None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.feature_generator import CONTEXT, ITEM, USER, FeatureGenerator, InputBinding

# How ExportTrainingSet names a feature's column.
EXPORT_SEPARATOR = "__"


def export_column(view: str, feature: str) -> str:
    return f"{view}{EXPORT_SEPARATOR}{feature}"


def fg_column(array: pa.ChunkedArray | pa.Array) -> Any:
    """One Arrow column as the FG reads it."""
    kind = array.type
    if pa.types.is_map(kind):
        return array.to_pylist()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return (
            array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            if array.null_count
            else array.to_numpy()
        )
    return array.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class FeatureColumns:
    """Which column of an exported training set feeds each FG input."""

    generator: FeatureGenerator
    binding: InputBinding

    def missing(self, table: pa.Table) -> list[str]:
        """Columns the FG needs that `table` lacks."""
        return sorted(set(self._columns().values()) - set(table.column_names))

    def inputs(self, table: pa.Table) -> dict[str, dict[str, Any]]:
        """`generate_rows` columns, every side per row."""
        sides: dict[str, dict[str, Any]] = {USER: {}, ITEM: {}, CONTEXT: {}}
        for (side, name), column in self._columns().items():
            sides[side][name] = fg_column(table.column(column))
        return sides

    def _columns(self) -> dict[tuple[str, str], str]:
        columns = {}
        for ref in self.generator.inputs:
            if ref.side == CONTEXT:
                columns[(ref.side, ref.name)] = ref.name
            else:
                found = self.binding.refs[ref]
                columns[(ref.side, ref.name)] = (
                    found.feature if found.is_key else export_column(found.view, found.feature)
                )
        return columns


class SnapshotLookup:
    """Item attributes by item id from a snapshot export, for the side features of sequences
    (the item cache plays this part online). Ids are matched by token, as the FG does."""

    def __init__(self, table: pa.Table, item_key: str, binding: InputBinding) -> None:
        rows = table.filter(pc.is_valid(table.column(item_key)))
        keys = [str(key) for key in rows.column(item_key).to_pylist()]
        self._values: dict[str, dict[str, Any]] = {}
        for name, feature in binding.side(ITEM).items():
            column = export_column(feature.view, feature.feature)
            if column in rows.column_names:
                self._values[name] = dict(zip(keys, rows.column(column).to_pylist(), strict=True))

    def __call__(self, name: str, ids: Sequence[str]) -> list[Any]:
        values = self._values.get(name, {})
        return [values.get(item) for item in ids]


def labels(table: pa.Table, columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Output name → its label column as float32 0/1 (nulls are 0)."""
    found = {}
    for output, column in columns.items():
        if column not in table.column_names:
            raise KeyError(f"label column {column!r} (for {output}) is not in the training rows")
        values = table.column(column).to_numpy(zero_copy_only=False)
        found[output] = np.nan_to_num(values.astype(np.float64)).astype(np.float32)
    return found
