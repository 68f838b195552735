"""Feature value types: the one table that maps registry types to PostgreSQL, Arrow and proto.

Every module that stores or serves values goes through these maps, so adding a type is one
row here rather than a branch in each adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from recstack.common.v1 import value_pb2

VT = value_pb2.ValueType


@dataclass(frozen=True)
class TypeInfo:
    """How one value type is stored and carried."""

    postgres: str
    arrow: pa.DataType
    proto_field: str


TYPES: dict[int, TypeInfo] = {
    VT.VALUE_TYPE_INT64: TypeInfo("bigint", pa.int64(), "int64_value"),
    VT.VALUE_TYPE_FLOAT: TypeInfo("real", pa.float32(), "float_value"),
    VT.VALUE_TYPE_DOUBLE: TypeInfo("double precision", pa.float64(), "double_value"),
    VT.VALUE_TYPE_STRING: TypeInfo("text", pa.string(), "string_value"),
    VT.VALUE_TYPE_BOOL: TypeInfo("boolean", pa.bool_(), "bool_value"),
    VT.VALUE_TYPE_BYTES: TypeInfo("bytea", pa.binary(), "bytes_value"),
    VT.VALUE_TYPE_FLOAT_LIST: TypeInfo("real[]", pa.list_(pa.float32()), "float_list_value"),
    VT.VALUE_TYPE_DOUBLE_LIST: TypeInfo(
        "double precision[]", pa.list_(pa.float64()), "double_list_value"
    ),
    VT.VALUE_TYPE_INT64_LIST: TypeInfo("bigint[]", pa.list_(pa.int64()), "int64_list_value"),
    VT.VALUE_TYPE_STRING_LIST: TypeInfo("text[]", pa.list_(pa.string()), "string_list_value"),
    VT.VALUE_TYPE_STRING_STRING_MAP: TypeInfo(
        "jsonb", pa.map_(pa.string(), pa.string()), "string_string_map_value"
    ),
    VT.VALUE_TYPE_STRING_DOUBLE_MAP: TypeInfo(
        "jsonb", pa.map_(pa.string(), pa.float64()), "string_double_map_value"
    ),
}

KEY_TYPES = frozenset({VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_STRING})


def type_name(value_type: int) -> str:
    return VT.Name(value_type).removeprefix("VALUE_TYPE_")


def to_proto(value: Any, value_type: int) -> value_pb2.Value:
    """A Python value (None for null) as a proto Value of the given type."""
    message = value_pb2.Value()
    if value is None:
        return message
    field = TYPES[value_type].proto_field
    if field.endswith("_list_value"):
        getattr(message, field).values.extend(value)
    elif field.endswith("_map_value"):
        getattr(message, field).values.update(value)
    else:
        setattr(message, field, value)
    return message


def from_proto(message: value_pb2.Value) -> Any:
    """The Python value of a proto Value (None when no arm is set)."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    value = getattr(message, kind)
    if kind.endswith("_list_value"):
        return list(value.values)
    if kind.endswith("_map_value"):
        return dict(value.values)
    return value


def proto_kind(value_type: int) -> str:
    """The `Value` oneof arm that carries a type."""
    return TYPES[value_type].proto_field


def generated_value(row: np.ndarray) -> value_pb2.Value:
    """One item's row of a generated model input as a Value: a one-element row as a scalar
    (`int64_value`/`float_value`), a longer one as a list; float32 values travel exactly."""
    if row.dtype.kind in "iu":
        if row.size == 1:
            return value_pb2.Value(int64_value=int(row.reshape(-1)[0]))
        return value_pb2.Value(int64_list_value=value_pb2.Int64List(values=row.tolist()))
    if row.size == 1:
        return value_pb2.Value(float_value=float(row.reshape(-1)[0]))
    return value_pb2.Value(float_list_value=value_pb2.FloatList(values=row.tolist()))


def generated_array(value: value_pb2.Value) -> np.ndarray:
    """The row `generated_value` encoded: int64 or float32, always one-dimensional."""
    kind = value.WhichOneof("kind")
    if kind == "int64_value":
        return np.array([value.int64_value], dtype=np.int64)
    if kind == "float_value":
        return np.array([value.float_value], dtype=np.float32)
    if kind == "int64_list_value":
        return np.array(value.int64_list_value.values, dtype=np.int64)
    if kind == "float_list_value":
        return np.array(value.float_list_value.values, dtype=np.float32)
    raise ValueError(f"{kind} is not a generated model input")
