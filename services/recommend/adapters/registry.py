"""The registry as the recommend service reads it: the cached client, plus ranking models'
active versions in the rank stage's terms (`ActiveModel`)."""

from __future__ import annotations

import threading
from typing import Any

from google.protobuf import json_format
from recstack.registry.v1 import model_pb2

from services.recommend.pipeline import ActiveModel
from shared.errors import FailedPrecondition, NotFound
from shared.feature_views import ViewSchema
from shared.registry_client import RegistryClient


class RegistryDefinitions:
    """`pipeline.Definitions` over `RegistryClient`, whose change feed makes an activation or
    rollback visible within its refresh period."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        # ModelVersion name + etag → its ActiveModel: a request must not re-parse the FG.
        self._models: dict[tuple[str, str], ActiveModel] = {}
        self._lock = threading.Lock()

    def feature_view(self, project: str, view_id: str, version: int = 0) -> Any:
        return self._client.feature_view(project, view_id, version)

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema:
        return self._client.view_schema(project, view_id, version)

    def model_feature_set(self, project: str, set_id: str) -> Any:
        return self._client.model_feature_set(project, set_id)

    def entity(self, project: str, entity_id: str) -> Any:
        return self._client.entity(project, entity_id)

    def model(self, project: str, model_id: str) -> Any:
        return self._client.model(project, model_id)

    def active_model(self, project: str, model_id: str) -> ActiveModel:
        try:
            version = self._client.active_model_version(project, model_id)
        except FailedPrecondition as exc:  # no active version: for the scene, a missing model
            raise NotFound(exc.message, reason=exc.reason) from None
        key = (version.name, version.etag)
        found = self._models.get(key)
        if found is None:
            found = _active(model_id, version)
            with self._lock:
                if len(self._models) > 64:
                    self._models.clear()
                self._models[key] = found
        return found

    def close(self) -> None:
        self._client.close()


def _active(model_id: str, version: model_pb2.ModelVersion) -> ActiveModel:
    return ActiveModel(
        model_id,
        version.version,
        json_format.MessageToDict(version.fg_config),
        tuple(f"{ref.feature_view}:{ref.feature}" for ref in version.resolved_features),
        version.triton_model_name,
        version.triton_model_version,
        tuple(output.name for output in version.signature.outputs),
    )
