"""Every value type converts to its proto arm and back unchanged."""

from __future__ import annotations

import pytest

from shared.values import TYPES, VT, from_proto, proto_kind, to_proto

SAMPLES = {
    VT.VALUE_TYPE_INT64: -(2**62),
    VT.VALUE_TYPE_FLOAT: 0.5,
    VT.VALUE_TYPE_DOUBLE: 1e-300,
    VT.VALUE_TYPE_STRING: "héllo",
    VT.VALUE_TYPE_BOOL: False,
    VT.VALUE_TYPE_BYTES: b"\x00\xff",
    VT.VALUE_TYPE_FLOAT_LIST: [0.25, -1.5],
    VT.VALUE_TYPE_DOUBLE_LIST: [1e-300, 2.0],
    VT.VALUE_TYPE_INT64_LIST: [1, -2, 3],
    VT.VALUE_TYPE_STRING_LIST: ["a", ""],
    VT.VALUE_TYPE_STRING_STRING_MAP: {"k": "v"},
    VT.VALUE_TYPE_STRING_DOUBLE_MAP: {"k": 0.5},
}


def test_every_type_has_a_sample():
    assert set(SAMPLES) == set(TYPES)


@pytest.mark.parametrize("value_type", sorted(SAMPLES))
def test_round_trip(value_type):
    message = to_proto(SAMPLES[value_type], value_type)
    assert message.WhichOneof("kind") == proto_kind(value_type)
    assert from_proto(message) == SAMPLES[value_type]


def test_none_is_an_empty_value():
    assert to_proto(None, VT.VALUE_TYPE_DOUBLE).WhichOneof("kind") is None
    assert from_proto(to_proto(None, VT.VALUE_TYPE_DOUBLE)) is None
