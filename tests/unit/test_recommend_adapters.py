"""The serving client adapter: request shape, statuses to values, gRPC errors to domain errors."""

from __future__ import annotations

import grpc
import pytest
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as spb

from services.recommend.adapters.serving_client import ServingUserFeatures
from shared.errors import FailedPrecondition, Internal, Unavailable

VT = value_pb2.ValueType


class FakeChannel:
    """Enough of `grpc.Channel` for a generated stub: every method answers with `respond`."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.calls: list[tuple[str, object, float | None]] = []

    def _method(self, method, *args, **kwargs):
        def call(request, timeout=None):
            self.calls.append((method, request, timeout))
            return self.respond(request)

        return call

    unary_unary = unary_stream = stream_unary = stream_stream = _method

    def close(self) -> None:
        pass


class RpcFailure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "went wrong"


def column(value: value_pb2.Value, status: int) -> spb.FeatureColumn:
    return spb.FeatureColumn(values=[value], statuses=[status])


def test_reads_one_key_and_maps_absent_values_to_none():
    response = spb.GetOnlineFeaturesResponse(
        feature_names=["user_profile:age", "user_profile:tenure"],
        columns=[
            column(value_pb2.Value(double_value=0.5), spb.FEATURE_STATUS_PRESENT),
            column(value_pb2.Value(double_value=9.0), spb.FEATURE_STATUS_OUTSIDE_TTL),
        ],
    )
    channel = FakeChannel(lambda request: response)
    reader = ServingUserFeatures("serving:1", timeout_seconds=0.5, channel=channel)

    values = reader.read(
        "shop", ["user_profile:age", "user_profile:tenure"], 7, VT.VALUE_TYPE_INT64
    )

    assert values == {"user_profile:age": 0.5, "user_profile:tenure": None}
    method, request, timeout = channel.calls[0]
    assert method.endswith("/GetOnlineFeatures")
    assert request.project == "shop"
    assert list(request.entity_keys) == [value_pb2.Value(int64_value=7)]
    assert timeout == 0.5


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.NOT_FOUND, FailedPrecondition),
        (grpc.StatusCode.INVALID_ARGUMENT, FailedPrecondition),
        # Not retryable: serving failing, or refusing recommend's credentials, is INTERNAL.
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.UNAUTHENTICATED, Internal),
        (grpc.StatusCode.PERMISSION_DENIED, Internal),
    ],
)
def test_grpc_errors_become_domain_errors(code, error):
    def fail(request):
        raise RpcFailure(code)

    reader = ServingUserFeatures("serving:1", channel=FakeChannel(fail))

    with pytest.raises(error, match="serving:1"):
        reader.read("shop", ["user_profile:age"], 7, VT.VALUE_TYPE_INT64)
