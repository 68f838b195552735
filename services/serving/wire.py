"""`GetOnlineFeaturesResponse` encoded straight to protobuf wire bytes.

Building the response as messages costs one `Value` and one `Timestamp` object per entity and
feature: 5 ms for 100 entities x 20 features, ten times the database read. The wire format is
simple and stable (https://protobuf.dev/programming-guides/encoding/), so columns are encoded
directly: a view's statuses and event times once per view, then shared by each of its feature
columns, and fixed-width values packed in bulk. Types with nested messages (lists, maps) are
encoded per value by upb. Clients parse the same bytes a generated message would produce.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from itertools import chain
from typing import Any

import numpy as np
from recstack.common.v1 import value_pb2
from recstack.serving.v1.serving_service_pb2 import FeatureColumn

from services.serving.features import ViewRead
from shared.values import VT, to_proto

# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
_RESPONSE_NAME, _RESPONSE_COLUMN = b"\x0a", b"\x12"
_COLUMN_VALUE, _COLUMN_STATUSES = b"\x0a", b"\x12"
_EMPTY_ENTRY = b"\x00"  # an unset Value / Timestamp: a zero-length message
_V = value_pb2.Value
_INT64_TAG = bytes((_V.INT64_VALUE_FIELD_NUMBER << 3 | 0,))
_STRING_TAG = bytes((_V.STRING_VALUE_FIELD_NUMBER << 3 | 2,))
_BOOL_TAG = _V.BOOL_VALUE_FIELD_NUMBER << 3 | 0
_SMALL = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= 0xFFFF_FFFF_FFFF_FFFF  # negative int64: ten bytes of two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_response(views: Sequence[ViewRead]) -> bytes:
    parts = [_names(tuple(view.names for view in views))]
    for view in views:
        shared = _statuses(view.statuses) + _event_times(view.event_micros)
        columns = _value_columns(view)
        size = len(columns[0])
        if all(len(values) == size for values in columns):
            # Equal-sized columns (fixed-width values) share one frame header: the view is
            # header, values, shared tail + header, values, ..., shared tail, in one join.
            frame = _RESPONSE_COLUMN + varint(size + len(shared))
            parts += (frame, (shared + frame).join(columns), shared)
            continue
        for values in columns:
            parts += (_RESPONSE_COLUMN, varint(len(values) + len(shared)), values, shared)
    return b"".join(parts)


def _value_columns(view: ViewRead) -> list[bytes]:
    """The `values` entries of each column of a view."""
    first = view.value_types[0]
    if first in _FIXED and view.value_types.count(first) == len(view.value_types):
        block = _fixed_block(first, view.values)
        if block is not None:
            return block
    return [
        (_ENCODERS.get(value_type) or _generic(value_type))(column)
        for value_type, column in zip(view.value_types, view.values, strict=True)
    ]


@lru_cache(maxsize=4096)
def _names(names: tuple[tuple[str, ...], ...]) -> bytes:
    """The `feature_names` entries; a request shape's names are the same on every call."""
    raw = [name.encode() for view_names in names for name in view_names]
    return b"".join(_RESPONSE_NAME + varint(len(name)) + name for name in raw)


def _statuses(statuses: Sequence[int]) -> bytes:
    """Packed repeated enum: every status is below 128, so one byte each."""
    return _COLUMN_STATUSES + varint(len(statuses)) + bytes(statuses)


def _event_times(micros: Sequence[int | None]) -> bytes:
    """The `event_times` entries of a column, encoded by upb (3x faster than in Python)."""
    column = FeatureColumn()
    add = column.event_times.add
    for m in micros:
        if m is None:
            add()  # an unset Timestamp: the value was not found
        else:
            seconds, fraction = divmod(m, 1_000_000)  # floor: nanos stay in [0, 1e9)
            add(seconds=seconds, nanos=fraction * 1000)
    return column.SerializeToString()


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fixed:
    """A float or double `Value` entry: 0x0a, its length, the arm's tag, little-endian bytes."""

    fmt: str
    header: bytes

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)

    @cached_property
    def entry(self) -> Callable[[bytes, Any], bytes]:
        """Packs (header, value) into one entry."""
        return struct.Struct(f"<{len(self.header)}s{self.fmt}").pack


_FIXED = {
    VT.VALUE_TYPE_DOUBLE: _Fixed("d", bytes((0x0A, 9, _V.DOUBLE_VALUE_FIELD_NUMBER << 3 | 1))),
    VT.VALUE_TYPE_FLOAT: _Fixed("f", bytes((0x0A, 5, _V.FLOAT_VALUE_FIELD_NUMBER << 3 | 5))),
}


def _fixed_block(value_type: int, columns: Sequence[Sequence[Any]]) -> list[bytes] | None:
    """Every column of one fixed type at once: one struct call packs all values, numpy weaves
    in the entry headers. None when a value is missing (NULL)."""
    spec = _FIXED[value_type]
    count = len(columns[0])
    try:
        if count == 1:
            # The most common read: one entry per column, header and value packed at once.
            entry, header = spec.entry, spec.header
            return [entry(header, column[0]) for column in columns]
        packed = struct.pack(f"<{count * len(columns)}{spec.fmt}", *chain.from_iterable(columns))
    except (struct.error, TypeError, OverflowError):
        return None
    width = len(spec.header) + spec.size
    block = np.empty((len(columns), count, width), dtype=np.uint8)
    block[:, :, : len(spec.header)] = np.frombuffer(spec.header, dtype=np.uint8)
    block[:, :, len(spec.header) :] = np.frombuffer(packed, dtype=np.uint8).reshape(
        len(columns), count, spec.size
    )
    return [column.tobytes() for column in block]


def _fixed(value_type: int) -> Callable[[Sequence[Any]], bytes]:
    """Encoder of one float or double column, NULLs included."""
    spec = _FIXED[value_type]
    pack = struct.Struct("<" + spec.fmt).pack
    header = spec.header

    def encode(column: Sequence[Any]) -> bytes:
        return b"".join(
            [_COLUMN_VALUE + _EMPTY_ENTRY if v is None else header + pack(v) for v in column]
        )

    return encode


def _int64(column: Sequence[Any]) -> bytes:
    parts = []
    for value in column:
        if value is None:
            parts.append(_COLUMN_VALUE + _EMPTY_ENTRY)
        else:
            body = varint(value)
            parts += (_COLUMN_VALUE, _SMALL[len(body) + 1], _INT64_TAG, body)
    return b"".join(parts)


def _string(column: Sequence[Any]) -> bytes:
    parts = []
    for value in column:
        if value is None:
            parts.append(_COLUMN_VALUE + _EMPTY_ENTRY)
            continue
        raw = value.encode()
        body = _STRING_TAG + varint(len(raw)) + raw
        parts += (_COLUMN_VALUE, varint(len(body)), body)
    return b"".join(parts)


_BOOL = {
    True: bytes((0x0A, 2, _BOOL_TAG, 1)),
    False: bytes((0x0A, 2, _BOOL_TAG, 0)),
    None: _COLUMN_VALUE + _EMPTY_ENTRY,
}


def _bool(column: Sequence[Any]) -> bytes:
    return b"".join([_BOOL[value] for value in column])


@cache
def _generic(value_type: int) -> Callable[[Sequence[Any]], bytes]:
    """Nested types (lists, maps, bytes) through upb, one `Value` at a time."""

    def encode(column: Sequence[Any]) -> bytes:
        parts = []
        for value in column:
            body = to_proto(value, value_type).SerializeToString()
            parts += (_COLUMN_VALUE, varint(len(body)), body)
        return b"".join(parts)

    return encode


_ENCODERS: dict[int, Callable[[Sequence[Any]], bytes]] = {
    VT.VALUE_TYPE_DOUBLE: _fixed(VT.VALUE_TYPE_DOUBLE),
    VT.VALUE_TYPE_FLOAT: _fixed(VT.VALUE_TYPE_FLOAT),
    VT.VALUE_TYPE_INT64: _int64,
    VT.VALUE_TYPE_STRING: _string,
    VT.VALUE_TYPE_BOOL: _bool,
}
