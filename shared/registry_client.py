"""Cached reads of registry definitions for the services that serve traffic.

Serving and recommend must not call the registry per request. Definitions stay cached until
the registry's change log names them: at most every `refresh_seconds` one `ListChanges` call
asks what changed since the last revision seen, and only those entries are dropped. If the
registry is unreachable, cached definitions keep serving and the check is retried later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    model_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
)

from shared.channels import ClientSettings, open_channel
from shared.errors import FailedPrecondition, InvalidArgument, upstream_error
from shared.feature_views import ViewSchema, view_schema

T = TypeVar("T")
log = structlog.get_logger(__name__)

CHANGES_PAGE = 1000


class RegistryClient:
    def __init__(
        self,
        address: str,
        *,
        client: ClientSettings | None = None,
        refresh_seconds: float = 5.0,
        timeout_seconds: float = 5.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or open_channel(address, client)
        self._stub = registry_service_pb2_grpc.RegistryServiceStub(self._channel)
        self._address = address
        self._refresh_seconds = refresh_seconds
        self._timeout = timeout_seconds
        # Keyed by (kind, resource name, ...): values stay until the change log names them.
        self._cache: dict[tuple[object, ...], object] = {}
        self._lock = threading.Lock()
        self._revision: int | None = None
        self._next_check = 0.0

    def close(self) -> None:
        self._channel.close()

    def feature_view(
        self, project: str, view_id: str, version: int = 0
    ) -> feature_view_pb2.FeatureView:
        name = f"projects/{project}/featureViews/{view_id}"
        request = registry_service_pb2.GetFeatureViewRequest(name=name, version=version)
        return self._cached(
            (name, version), lambda: self._call(self._stub.GetFeatureView, request).feature_view
        )

    def entity(self, project: str, entity_id: str) -> entity_pb2.Entity:
        name = f"projects/{project}/entities/{entity_id}"
        request = registry_service_pb2.GetEntityRequest(name=name)
        return self._cached((name,), lambda: self._call(self._stub.GetEntity, request).entity)

    def data_source(self, project: str, source_id: str) -> data_source_pb2.DataSource:
        name = f"projects/{project}/dataSources/{source_id}"
        request = registry_service_pb2.GetDataSourceRequest(name=name)
        return self._cached(
            (name,), lambda: self._call(self._stub.GetDataSource, request).data_source
        )

    def embedding_model(self, project: str, model_id: str) -> embedding_model_pb2.EmbeddingModel:
        name = f"projects/{project}/embeddingModels/{model_id}"
        request = registry_service_pb2.GetEmbeddingModelRequest(name=name)
        return self._cached(
            (name,), lambda: self._call(self._stub.GetEmbeddingModel, request).embedding_model
        )

    def model_feature_set(self, project: str, set_id: str) -> model_feature_set_pb2.ModelFeatureSet:
        name = f"projects/{project}/modelFeatureSets/{set_id}"
        request = registry_service_pb2.GetModelFeatureSetRequest(name=name)
        return self._cached(
            (name,),
            lambda: self._call(self._stub.GetModelFeatureSet, request).model_feature_set,
        )

    def model(self, project: str, model_id: str) -> model_pb2.Model:
        name = f"projects/{project}/models/{model_id}"
        request = registry_service_pb2.GetModelRequest(name=name)
        return self._cached((name,), lambda: self._call(self._stub.GetModel, request).model)

    def model_version(self, project: str, model_id: str, version: int) -> model_pb2.ModelVersion:
        name = f"projects/{project}/models/{model_id}/versions/{version}"
        request = registry_service_pb2.GetModelVersionRequest(name=name)
        return self._cached(
            (name,), lambda: self._call(self._stub.GetModelVersion, request).model_version
        )

    def active_model_version(self, project: str, model_id: str) -> model_pb2.ModelVersion:
        """The model's ACTIVE version: an activation or rollback is seen at the next refresh.

        NotFound when the model does not exist, FailedPrecondition when no version is active.
        """
        model = self.model(project, model_id)
        if not model.active_version:
            raise FailedPrecondition(
                f"{model.name} has no active version: deploy and activate one "
                f"(`recstack model activate {project}/{model_id} VERSION`)",
                reason="NO_ACTIVE_VERSION",
            )
        return self.model_version(project, model_id, model.active_version)

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema:
        view = self.feature_view(project, view_id, version)
        return view_schema(project, view, self.entity(project, view.entity))

    # --- cache --------------------------------------------------------------------------

    def _cached(self, key: tuple[object, ...], load: Callable[[], T]) -> T:
        self._refresh()
        with self._lock:
            if key in self._cache:
                return self._cache[key]  # type: ignore[return-value]
        value = load()
        with self._lock:
            self._cache[key] = value
        return value

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._refresh_seconds
        try:
            self._apply_changes()
        except grpc.RpcError as exc:
            log.warning("registry_refresh_failed", registry=self._address, code=exc.code().name)

    def _apply_changes(self) -> None:
        if self._revision is None:
            head = self._list_changes(0, 1).head_revision
            with self._lock:
                self._cache.clear()
                self._revision = head
            return
        while True:
            response = self._list_changes(self._revision, CHANGES_PAGE)
            changed = {change.name for change in response.changes}
            with self._lock:
                for key in [key for key in self._cache if key[0] in changed]:
                    del self._cache[key]
                self._revision = response.revision
            if len(response.changes) < CHANGES_PAGE:
                return

    def _list_changes(self, since: int, page_size: int) -> registry_service_pb2.ListChangesResponse:
        request = registry_service_pb2.ListChangesRequest(since_revision=since, page_size=page_size)
        return self._stub.ListChanges(request, timeout=self._timeout)

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(_violated_field(exc), exc.details() or "") from None
            # Upstream statuses keep their meaning (shared.errors.upstream_error).
            raise upstream_error(
                f"the registry at {self._address}", code.name, exc.details() or ""
            ) from None


def _violated_field(error: grpc.RpcError) -> str:
    """The field the registry named in its BadRequest detail (the reference that was bad)."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        status = None
    for detail in status.details if status is not None else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            return bad_request.field_violations[0].field
    return "name"
