"""`UserFeatureReader` over the serving service's `GetOnlineFeatures` gRPC method.

gRPC errors are translated here, at the edge, so the domain sees only `shared.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from shared.channels import ClientSettings, open_channel
from shared.errors import DomainError, FailedPrecondition, Unavailable, upstream_error
from shared.request_context import seconds_remaining
from shared.values import from_proto, to_proto

_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    # A scene that names a view or feature serving does not know is a configuration error of
    # the scene, not of the request.
    grpc.StatusCode.NOT_FOUND: FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: FailedPrecondition,
}


class ServingUserFeatures:
    """Reads user features from the serving service; thread-safe (gRPC channels are)."""

    def __init__(
        self,
        address: str,
        *,
        client: ClientSettings | None = None,
        timeout_seconds: float = 2.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._address = address
        self._channel = channel or open_channel(address, client)
        self._stub = serving_service_pb2_grpc.FeatureServingServiceStub(self._channel)
        self._timeout = timeout_seconds

    def close(self) -> None:
        self._channel.close()

    def read(self, project: str, refs: Sequence[str], key: Any, key_type: int) -> dict[str, Any]:
        request = pb.GetOnlineFeaturesRequest(
            project=project, features=list(refs), entity_keys=[to_proto(key, key_type)]
        )
        try:
            response = self._stub.GetOnlineFeatures(request, timeout=self._deadline())
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        return {
            name: from_proto(column.values[0])
            if column.statuses[0] == pb.FEATURE_STATUS_PRESENT
            else None
            for name, column in zip(response.feature_names, response.columns, strict=True)
        }

    def _deadline(self) -> float:
        remaining = seconds_remaining()
        return self._timeout if remaining is None else min(self._timeout, remaining)

    def _translate(self, exc: grpc.RpcError) -> DomainError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code is not None and code not in _ERRORS:
            # Serving refused recommend's credentials, or failed itself: not retryable.
            return upstream_error(f"serving at {self._address}", code.name, details or "")
        error = _ERRORS.get(code, Unavailable) if code is not None else Unavailable
        return error(
            f"serving at {self._address} answered {code.name if code else 'UNKNOWN'} for user "
            f"features: {details}",
            reason="USER_FEATURES_UNAVAILABLE" if error is Unavailable else "USER_FEATURES_INVALID",
        )
