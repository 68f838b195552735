"""Preparing a bulk load: one Arrow table per load, typed, validated, newest row per key.

Deduplicating and sorting on the client (Arrow sorts 1M keys in ~0.15 s) lets the server
skip DISTINCT ON, insert into the primary-key index in key order (about twice as fast as in
random order) and, on an empty table, COPY straight into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.types.json import Jsonb

from shared.errors import InvalidArgument
from shared.feature_views import ViewSchema
from shared.online_store.binary_copy import TIMESTAMP_US, BinaryCopyEncoder, is_fixed_width
from shared.online_store.statements import column_names
from shared.values import TYPES

Row = tuple[Any, ...]
LoadData = pa.Table | pa.RecordBatch | Sequence[Row]
PY_CHUNK_ROWS = 10_000


def _arrow_types(view: ViewSchema) -> list[pa.DataType]:
    return [
        TYPES[view.key_type].arrow,
        *(TYPES[f.value_type].arrow for f in view.features),
        TIMESTAMP_US,
    ]


@dataclass(frozen=True)
class PreparedLoad:
    """Typed columns in view order, and the row order to write them in (None: as they are)."""

    columns: list[pa.ChunkedArray]
    order: np.ndarray | None
    input_rows: int

    @property
    def rows(self) -> int:
        return self.input_rows if self.order is None else len(self.order)

    @property
    def fixed_width(self) -> bool:
        return is_fixed_width([column.type for column in self.columns])

    def copy_chunks(self) -> Iterator[bytes]:
        """Binary COPY data, signature and trailer included (fixed-width columns only)."""
        return BinaryCopyEncoder(self.columns, self.order).chunks()

    def python_rows(self) -> Iterator[Row]:
        """Rows as Python values for psycopg's `write_row` (variable-width columns)."""
        columns = self.columns
        if self.order is not None:
            indices = pa.array(self.order)
            columns = [column.take(indices) for column in columns]
        table = pa.Table.from_arrays(columns, names=[str(i) for i in range(len(columns))])
        converters = [_converter(column.type) for column in columns]
        for batch in table.to_batches(PY_CHUNK_ROWS):
            values = [
                convert(column.to_pylist()) if convert else column.to_pylist()
                for column, convert in zip(batch.columns, converters, strict=True)
            ]
            yield from zip(*values, strict=True)


def prepare(view: ViewSchema, data: LoadData) -> PreparedLoad:
    table = _as_table(view, data)
    names = column_names(view)
    columns = [
        _typed(table, name, arrow_type)
        for name, arrow_type in zip(names, _arrow_types(view), strict=True)
    ]
    for name, column in ((names[0], columns[0]), ("event_ts", columns[-1])):
        if column.null_count:
            raise InvalidArgument(f"data.{name}", f"{column.null_count} rows have no {name}")
    return PreparedLoad(columns, _newest_per_key_order(columns[0], columns[-1]), table.num_rows)


def _as_table(view: ViewSchema, data: LoadData) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    names = column_names(view)
    columns = list(zip(*data, strict=True)) if data else [()] * len(names)
    if len(columns) != len(names):
        raise InvalidArgument("data", f"rows must have {len(names)} values: {', '.join(names)}")
    arrays = []
    for name, column, arrow_type in zip(names, columns, _arrow_types(view), strict=True):
        try:
            arrays.append(pa.array(column, type=arrow_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"data.{name}", f"not {arrow_type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, names=names)


def _typed(table: pa.Table, name: str, arrow_type: pa.DataType) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise InvalidArgument(f"data.{name}", "column is missing")
    column = table.column(name)
    if column.type == arrow_type:
        return column
    try:
        # Nanosecond event times lose their last digits, as PostgreSQL would on insert.
        return column.cast(arrow_type, safe=not pa.types.is_timestamp(arrow_type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        message = f"cannot store {column.type} as {arrow_type}"
        raise InvalidArgument(f"data.{name}", message) from exc


def _newest_per_key_order(keys: pa.ChunkedArray, event_ts: pa.ChunkedArray) -> np.ndarray | None:
    """Row indices sorted by key, keeping each key's newest event; None if already so."""
    count = len(keys)
    if count < 2 or pc.all(pc.greater(keys[1:], keys[: count - 1])).as_py():
        return None
    order = pc.sort_indices(
        pa.table({"k": keys, "t": event_ts}),
        sort_keys=[("k", "ascending"), ("t", "descending")],
    )
    sorted_keys = keys.take(order)
    first = pc.not_equal(sorted_keys[1:], sorted_keys[: count - 1])
    keep = np.concatenate([[True], first.to_numpy(zero_copy_only=False)])
    return order.to_numpy()[keep]


def _converter(arrow_type: pa.DataType) -> Callable[[list[Any]], list[Any]] | None:
    """Arrow → psycopg: maps come back as (key, value) pairs and go to jsonb."""
    if pa.types.is_map(arrow_type):
        return _maps_as_json
    return None


def _maps_as_json(values: list[Any]) -> list[Any]:
    return [None if value is None else Jsonb(dict(value)) for value in values]
