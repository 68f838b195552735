"""gRPC edge of serving: protobuf ↔ plain values around `FeatureServer`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from services.serving.features import FeatureColumn, FeatureServer, RowInput, TypedValue
from shared.values import from_proto, to_proto

_UTC = UTC


def _typed(value: object) -> TypedValue:
    return TypedValue(from_proto(value), value.WhichOneof("kind"))  # type: ignore[attr-defined]


def _rows(rows: Iterable[pb.FeatureRow]) -> list[RowInput]:
    return [
        RowInput(
            {name: _typed(value) for name, value in row.values.items()},
            row.event_time.ToDatetime(tzinfo=_UTC) if row.HasField("event_time") else None,
        )
        for row in rows
    ]


def _column(column: FeatureColumn) -> pb.FeatureColumn:
    event_times = []
    for event_time in column.event_times:
        stamp = Timestamp()
        if event_time is not None:
            stamp.FromDatetime(event_time)
        event_times.append(stamp)
    return pb.FeatureColumn(
        values=[to_proto(value, column.value_type) for value in column.values],
        statuses=[int(status) for status in column.statuses],
        event_times=event_times,
    )


class FeatureServingServicer(serving_service_pb2_grpc.FeatureServingServiceServicer):
    def __init__(self, features: FeatureServer) -> None:
        self._features = features

    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        columns = self._features.get_online_features(
            request.project,
            list(request.features),
            request.model_feature_set,
            [_typed(key) for key in request.entity_keys],
        )
        return pb.GetOnlineFeaturesResponse(
            feature_names=[column.name for column in columns],
            columns=[_column(column) for column in columns],
        )

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
        written = stale = batches = 0
        for batch in request_iterator:
            result = self._features.write(
                batch.project, batch.feature_view, batch.version, _rows(batch.rows)
            )
            written, stale, batches = written + result.written, stale + result.stale, batches + 1
        return pb.PushFeaturesResponse(rows_written=written, rows_stale=stale, batches=batches)
