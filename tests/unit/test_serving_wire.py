"""The hand-encoded GetOnlineFeaturesResponse is byte for byte what upb would serialize."""

from __future__ import annotations

import math

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from recstack.serving.v1 import serving_service_pb2 as pb

from services.serving.features import Status, ViewRead
from services.serving.wire import encode_response, varint
from shared.feature_views import Feature, ViewSchema
from shared.values import VT, to_proto

MICROS = [1_763_900_000_123_456, None, -1_500_000]  # now-ish, missing, before 1970
STATUSES = [Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_TTL]

SAMPLES = {
    VT.VALUE_TYPE_INT64: [-(2**63), None, 2**63 - 1],
    VT.VALUE_TYPE_FLOAT: [0.5, None, -1.25],
    VT.VALUE_TYPE_DOUBLE: [math.pi, None, -0.0],
    VT.VALUE_TYPE_STRING: ["ÅÅ 日本", None, ""],
    VT.VALUE_TYPE_BOOL: [False, None, True],
    VT.VALUE_TYPE_BYTES: [b"\x00\xff", None, b""],
    VT.VALUE_TYPE_FLOAT_LIST: [[0.5, -2.0], None, []],
    VT.VALUE_TYPE_DOUBLE_LIST: [[1e-300, 2.5], None, []],
    VT.VALUE_TYPE_INT64_LIST: [[-1, 0, 2**40], None, []],
    VT.VALUE_TYPE_STRING_LIST: [["a", "β"], None, []],
    VT.VALUE_TYPE_STRING_STRING_MAP: [{"k": "v"}, None, {}],
    VT.VALUE_TYPE_STRING_DOUBLE_MAP: [{"shoes": 0.75}, None, {}],
}


def _view(types):
    features = tuple(Feature(f"f{i}", t) for i, t in enumerate(types))
    return ViewSchema("p", "v", 1, "k", VT.VALUE_TYPE_INT64, features)


def _read(columns, types, micros, statuses):
    view = _view(types)
    names = tuple(f"v:{feature.name}" for feature in view.features)
    return ViewRead(view, names, tuple(types), columns, list(statuses), list(micros))


def _stamp(micros):
    if micros is None:
        return Timestamp()
    seconds, fraction = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=fraction * 1000)


def _expected(reads):
    response = pb.GetOnlineFeaturesResponse()
    for read in reads:
        for name, value_type, column in zip(read.names, read.value_types, read.values, strict=True):
            response.feature_names.append(name)
            response.columns.add(
                values=[to_proto(value, value_type) for value in column],
                statuses=[int(status) for status in read.statuses],
                event_times=[_stamp(m) for m in read.event_micros],
            )
    return response


def _check(reads):
    encoded = encode_response(reads)
    expected = _expected(reads)
    assert pb.GetOnlineFeaturesResponse.FromString(encoded) == expected
    assert encoded == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("value_type", list(SAMPLES), ids=lambda t: VT.Name(t))
def test_every_type_with_nulls(value_type):
    _check([_read([SAMPLES[value_type]], [value_type], MICROS, STATUSES)])


def test_several_views_and_mixed_types_in_one_response():
    first = _read(
        [SAMPLES[VT.VALUE_TYPE_DOUBLE], SAMPLES[VT.VALUE_TYPE_STRING]],
        [VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_STRING],
        MICROS,
        STATUSES,
    )
    second = _read([[1, 2, 3]], [VT.VALUE_TYPE_INT64], [0, 1, 999_999], [Status.PRESENT] * 3)
    _check([first, second])


@pytest.mark.parametrize("keys", [1, 2, 100, 1000])
@pytest.mark.parametrize("value_type", [VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_FLOAT])
def test_dense_fixed_width_views_in_bulk(keys, value_type):
    columns = [[(i * 7 + j) / 4 for i in range(keys)] for j in range(20)]
    micros = [1_700_000_000_000_000 + i for i in range(keys)]
    _check([_read(columns, [value_type] * 20, micros, [Status.PRESENT] * keys)])


def test_dense_view_with_a_missing_row_falls_back_per_value():
    columns = [[1.5, None, 2.5] for _ in range(20)]
    _check([_read(columns, [VT.VALUE_TYPE_DOUBLE] * 20, MICROS, STATUSES)])


@pytest.mark.parametrize("value_type", [VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_FLOAT])
def test_a_one_key_read_of_a_missing_row_falls_back_per_value(value_type):
    _check([_read([[None]] * 20, [value_type] * 20, [None], [Status.NOT_FOUND])])


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**63 - 1, -1, -(2**63)])
def test_varint_matches_upb(value):
    assert b"\x08" + varint(value) == to_proto(value, VT.VALUE_TYPE_INT64).SerializeToString()
