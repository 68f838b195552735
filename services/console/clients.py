"""The console's only way to the platform: the four services' public gRPC APIs.

One channel per service from the shared factory (`shared.channels.open_channel`), opened
without a token of the console's own: the person's token travels as per-call metadata, so the
service that answers decides what that person may do, never the console.

`Clients.call` turns every gRPC failure into a `ServiceError` naming the service, so a page
can say which service refused or is unavailable instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from recstack.materialization.v1 import materialization_service_pb2_grpc
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2_grpc
from recstack.serving.v1 import serving_service_pb2_grpc

from shared.channels import AUTHORIZATION, ClientSettings, open_channel

REGISTRY = "registry"
MATERIALIZATION = "materialization"
SERVING = "serving"
RECOMMEND = "recommend"

_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    REGISTRY: registry_service_pb2_grpc.RegistryServiceStub,
    MATERIALIZATION: materialization_service_pb2_grpc.MaterializationServiceStub,
    SERVING: serving_service_pb2_grpc.FeatureServingServiceStub,
    RECOMMEND: recommend_service_pb2_grpc.RecommendServiceStub,
}
# Statuses that mean "the service could not be reached", not "it said no".
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# A page waits at most this long for one answer; a stuck service must not hang the console.
CALL_TIMEOUT_S = 10.0


# Not frozen: raising an exception sets its __traceback__.
@dataclass(eq=False)
class ServiceError(Exception):
    """A call that failed: which service, its status, and its own message."""

    service: str
    address: str
    code: grpc.StatusCode
    message: str

    @property
    def unreachable(self) -> bool:
        return self.code in _UNREACHABLE

    @property
    def unauthenticated(self) -> bool:
        return self.code == grpc.StatusCode.UNAUTHENTICATED

    @property
    def code_name(self) -> str:
        return self.code.name

    def __str__(self) -> str:
        return f"{self.service} ({self.code.name}): {self.message}"


class Clients:
    """Stubs of the four services on channels of the shared factory."""

    def __init__(self, addresses: dict[str, str], settings: ClientSettings) -> None:
        # The console sends the person's token, never one of its own.
        settings = settings.model_copy(update={"token_file": None})
        self.addresses = dict(addresses)
        self._channels = {name: open_channel(addresses[name], settings) for name in _STUBS}
        self._stubs = {name: make(self._channels[name]) for name, make in _STUBS.items()}

    def call(
        self,
        service: str,
        method: str,
        request: Any,
        token: str = "",
        timeout: float = CALL_TIMEOUT_S,
    ) -> Any:
        """`method` of `service` with `request`, sending `token` as the bearer token."""
        rpc = getattr(self._stubs[service], method)
        try:
            return rpc(request, timeout=timeout, metadata=_metadata(token))
        except grpc.RpcError as exc:
            raise self._error(service, exc) from None

    def stream(
        self, service: str, method: str, request: Any, token: str = "", timeout: float = 60.0
    ) -> Iterator[Any]:
        """The responses of a server-streaming `method`, until it ends or `timeout` passes."""
        rpc = getattr(self._stubs[service], method)
        try:
            yield from rpc(request, timeout=timeout, metadata=_metadata(token))
        except grpc.RpcError as exc:
            raise self._error(service, exc) from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _error(self, service: str, exc: grpc.RpcError) -> ServiceError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return ServiceError(service, self.addresses[service], code, details or code.name)


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()
