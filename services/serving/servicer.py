"""gRPC edge of serving: protobuf ↔ plain values around `FeatureServer`.

GetOnlineFeatures answers with bytes already in the wire format of its response message
(`wire.py`), so `add_to_server` registers it with a serializer that passes bytes through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC
from operator import attrgetter

import grpc
from google.protobuf.message import Message
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from services.serving.features import (
    EntityKeys,
    FeatureServer,
    PushBatch,
    RowInput,
    TypedValue,
)
from services.serving.wire import encode_response
from shared.values import from_proto

SERVICE = pb.DESCRIPTOR.services_by_name["FeatureServingService"]


def _typed(value: value_pb2.Value) -> TypedValue:
    return TypedValue(from_proto(value), value.WhichOneof("kind"))


def _entity_keys(keys: Iterable[value_pb2.Value]) -> EntityKeys:
    keys = list(keys)
    kinds = [key.WhichOneof("kind") for key in keys]
    if kinds and kinds[0] is not None and kinds.count(kinds[0]) == len(kinds):
        # One arm for all keys (every valid request): one C-level attribute sweep.
        return EntityKeys(kinds, list(map(attrgetter(kinds[0]), keys)))
    return EntityKeys(kinds, [from_proto(key) for key in keys])


def _rows(rows: Iterable[pb.FeatureRow]) -> list[RowInput]:
    return [
        RowInput(
            {name: _typed(value) for name, value in row.values.items()},
            row.event_time.ToDatetime(tzinfo=UTC) if row.HasField("event_time") else None,
        )
        for row in rows
    ]


class FeatureServingServicer(serving_service_pb2_grpc.FeatureServingServiceServicer):
    def __init__(self, features: FeatureServer) -> None:
        self._features = features

    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> bytes:
        views = self._features.get_online_features(
            request.project,
            request.features,
            request.model_feature_set,
            _entity_keys(request.entity_keys),
        )
        return encode_response(views)

    def WriteFeatures(
        self, request: pb.WriteFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.WriteFeaturesResponse:
        result = self._features.write(
            request.project, request.feature_view, request.version, _rows(request.rows)
        )
        return pb.WriteFeaturesResponse(rows_written=result.written, rows_stale=result.stale)

    def PushFeatures(
        self, request_iterator: Iterator[pb.PushFeaturesRequest], context: grpc.ServicerContext
    ) -> pb.PushFeaturesResponse:
        result = self._features.push(
            PushBatch(batch.project, batch.feature_view, batch.version, _rows(batch.rows))
            for batch in request_iterator
        )
        return pb.PushFeaturesResponse(
            rows_written=result.written, rows_stale=result.stale, batches=result.batches
        )


def _serialize(response: bytes | Message) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_to_server(servicer: FeatureServingServicer, server: grpc.Server) -> None:
    """The generated `add_FeatureServingServiceServicer_to_server`, except that every response
    may also be pre-encoded bytes."""
    messages = {method.name: method for method in SERVICE.methods}
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for name, method in messages.items():
        request_class = getattr(pb, method.input_type.name)
        factory = factories[(method.client_streaming, method.server_streaming)]
        handlers[name] = factory(
            getattr(servicer, name),
            request_deserializer=request_class.FromString,
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
