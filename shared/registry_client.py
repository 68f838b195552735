"""Cached reads of registry definitions for the services that serve traffic.

Serving and recommend must not call the registry per request: definitions are cached, a
pinned version forever (it is immutable), the latest version for `ttl_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
)

from shared.errors import DomainError, InvalidArgument, NotFound, Unavailable
from shared.feature_views import ViewSchema, view_schema

T = TypeVar("T")

_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


class RegistryClient:
    def __init__(
        self, address: str, *, ttl_seconds: float = 5.0, timeout_seconds: float = 5.0
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = registry_service_pb2_grpc.RegistryServiceStub(self._channel)
        self._address = address
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._cache: dict[tuple[object, ...], tuple[float, object]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def feature_view(
        self, project: str, view_id: str, version: int = 0
    ) -> feature_view_pb2.FeatureView:
        name = f"projects/{project}/featureViews/{view_id}"
        request = registry_service_pb2.GetFeatureViewRequest(name=name, version=version)
        return self._cached(
            ("feature_view", name, version),
            lambda: self._call(self._stub.GetFeatureView, request).feature_view,
            forever=version > 0,
        )

    def entity(self, project: str, entity_id: str) -> entity_pb2.Entity:
        name = f"projects/{project}/entities/{entity_id}"
        request = registry_service_pb2.GetEntityRequest(name=name)
        return self._cached(
            ("entity", name), lambda: self._call(self._stub.GetEntity, request).entity
        )

    def data_source(self, project: str, source_id: str) -> data_source_pb2.DataSource:
        name = f"projects/{project}/dataSources/{source_id}"
        request = registry_service_pb2.GetDataSourceRequest(name=name)
        return self._cached(
            ("data_source", name), lambda: self._call(self._stub.GetDataSource, request).data_source
        )

    def model_feature_set(self, project: str, set_id: str) -> model_feature_set_pb2.ModelFeatureSet:
        name = f"projects/{project}/modelFeatureSets/{set_id}"
        request = registry_service_pb2.GetModelFeatureSetRequest(name=name)
        return self._cached(
            ("model_feature_set", name),
            lambda: self._call(self._stub.GetModelFeatureSet, request).model_feature_set,
        )

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema:
        view = self.feature_view(project, view_id, version)
        return view_schema(project, view, self.entity(project, view.entity))

    def _cached(self, key: tuple[object, ...], load: Callable[[], T], forever: bool = False) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[return-value]
        value = load()
        expiry = float("inf") if forever else now + self._ttl
        with self._lock:
            self._cache[key] = (expiry, value)
        return value

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("feature", exc.details() or "invalid reference") from exc
            error = _ERRORS.get(code, Unavailable)
            raise error(f"registry at {self._address}: {exc.details()}") from exc
