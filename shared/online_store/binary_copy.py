"""Arrow columns → PostgreSQL binary COPY bytes, vectorised with numpy.

psycopg's `write_row` formats about one row per few microseconds in C, which caps a 1M-row
load at several seconds of client CPU. For fixed-width types (bigint, real, double precision,
boolean, timestamptz) the binary COPY layout of a row is fixed too, so a chunk of rows is one
numpy structured array filled column by column; chunks with NULLs get a per-row layout
computed with cumulative sums. Variable-width types (text, arrays, jsonb) go through psycopg.

Layout: https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
# PostgreSQL counts timestamps in microseconds from 2000-01-01, Arrow from 1970-01-01.
PG_EPOCH_MICROS = 946_684_800_000_000
TIMESTAMP_US = pa.timestamp("us", tz="UTC")
# About 16 MiB of COPY data per chunk for 20 double columns: big enough that per-chunk numpy
# overhead vanishes, small enough to stay in cache-friendly buffers and overlap with the server.
CHUNK_ROWS = 65_536


def _numpy_format(arrow_type: pa.DataType) -> str | None:
    """Big-endian numpy format of a fixed-width Arrow type, None for variable width."""
    if pa.types.is_timestamp(arrow_type) or pa.types.is_int64(arrow_type):
        return ">i8"
    if pa.types.is_float64(arrow_type):
        return ">f8"
    if pa.types.is_float32(arrow_type):
        return ">f4"
    if pa.types.is_boolean(arrow_type):
        return "u1"
    return None


def is_fixed_width(types: Sequence[pa.DataType]) -> bool:
    return all(_numpy_format(arrow_type) is not None for arrow_type in types)


@dataclass(frozen=True)
class _Column:
    values: np.ndarray
    valid: np.ndarray | None  # None: no NULLs in the column


def _column(array: pa.ChunkedArray | pa.Array) -> _Column:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    arrow_type = array.type
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if array.null_count:
        array = pc.fill_null(array, pa.scalar(False if pa.types.is_boolean(arrow_type) else 0))
    if pa.types.is_timestamp(arrow_type):
        micros = array.cast(TIMESTAMP_US, safe=False).cast(pa.int64())
        values = micros.to_numpy(zero_copy_only=False) - PG_EPOCH_MICROS
    else:
        values = array.to_numpy(zero_copy_only=False)
    fmt = _numpy_format(arrow_type)
    assert fmt is not None, f"{arrow_type} is not fixed width"
    return _Column(values.astype(fmt, copy=False), valid)


class BinaryCopyEncoder:
    """Encodes fixed-width columns, optionally in a given row order, as binary COPY chunks."""

    def __init__(
        self, columns: Sequence[pa.ChunkedArray | pa.Array], order: np.ndarray | None = None
    ) -> None:
        self._columns = [_column(column) for column in columns]
        self._order = order
        self._rows = len(order) if order is not None else len(self._columns[0].values)
        fields: list[tuple[str, str]] = [("count", ">i2")]
        for index, column in enumerate(self._columns):
            fields += [(f"l{index}", ">i4"), (f"v{index}", column.values.dtype.str)]
        self._dense = np.dtype(fields)

    def chunks(self, rows_per_chunk: int = CHUNK_ROWS) -> Iterator[bytes]:
        """The signature, then the rows in chunks, then the trailer."""
        yield SIGNATURE
        for start in range(0, self._rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, self._rows)
            rows = self._order[start:stop] if self._order is not None else slice(start, stop)
            yield self._encode(rows, stop - start)
        yield TRAILER

    def _encode(self, rows: np.ndarray | slice, count: int) -> bytes:
        values = [column.values[rows] for column in self._columns]
        valid = [None if column.valid is None else column.valid[rows] for column in self._columns]
        if all(mask is None or mask.all() for mask in valid):
            return self._encode_dense(values, count)
        return self._encode_sparse(values, valid, count)

    def _encode_dense(self, values: list[np.ndarray], count: int) -> bytes:
        out = np.empty(count, dtype=self._dense)
        out["count"] = len(values)
        for index, column in enumerate(values):
            out[f"l{index}"] = column.dtype.itemsize
            out[f"v{index}"] = column
        return out.tobytes()

    def _encode_sparse(
        self, values: list[np.ndarray], valid: list[np.ndarray | None], count: int
    ) -> bytes:
        """Rows of different lengths: a NULL field is length -1 and no data."""
        widths = np.array([column.dtype.itemsize for column in values])
        present = np.stack(
            [np.ones(count, bool) if mask is None else mask for mask in valid], axis=1
        )
        field_bytes = 4 + present * widths
        row_bytes = 2 + field_bytes.sum(axis=1)
        row_start = np.cumsum(row_bytes) - row_bytes
        field_start = row_start[:, None] + 2 + np.cumsum(field_bytes, axis=1) - field_bytes
        out = np.empty(int(row_bytes.sum()), dtype=np.uint8)
        _scatter(out, row_start, np.full(count, len(values), ">i2"))
        for index, column in enumerate(values):
            mask = present[:, index]
            lengths = np.where(mask, column.dtype.itemsize, -1).astype(">i4")
            _scatter(out, field_start[:, index], lengths)
            _scatter(out, field_start[mask, index] + 4, column[mask])
        return out.tobytes()


def _scatter(out: np.ndarray, starts: np.ndarray, items: np.ndarray) -> None:
    """Write each big-endian item's bytes at its start offset."""
    width = items.dtype.itemsize
    raw = np.ascontiguousarray(items).view(np.uint8).reshape(-1, width)
    out[starts[:, None] + np.arange(width)] = raw
