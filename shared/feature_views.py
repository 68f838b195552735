"""The slice of a registry feature view that stores and readers need, free of protobuf."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from recstack.registry.v1 import entity_pb2, feature_view_pb2


@dataclass(frozen=True)
class Feature:
    name: str
    value_type: int
    # Set for fields the platform produces (LLM_EMBEDDING): the model and its raw input field.
    embedding_model: str = ""
    input_field: str = ""

    @property
    def produced(self) -> bool:
        return bool(self.embedding_model)


@dataclass(frozen=True)
class ViewSchema:
    """One version of a feature view: its key and typed features."""

    project: str
    name: str
    version: int
    join_key: str
    key_type: int
    features: tuple[Feature, ...]
    ttl_seconds: float = 0.0

    @property
    def table_name(self) -> str:
        """`{project}__{view}__v{version}`, shortened with a hash past PostgreSQL's 63 bytes."""
        name = f"{self.project}__{self.name}__v{self.version}"
        if len(name) <= 63:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"{name[:46]}_{digest}__v{self.version}"[-63:]

    def feature(self, name: str) -> Feature | None:
        return next((feature for feature in self.features if feature.name == name), None)


def view_schema(
    project: str, view: feature_view_pb2.FeatureView, entity: entity_pb2.Entity
) -> ViewSchema:
    features = tuple(
        Feature(
            field.name,
            field.value_type,
            field.production.embedding_model if field.HasField("production") else "",
            field.production.input_field if field.HasField("production") else "",
        )
        for field in view.fields
        if field.name != entity.join_key
    )
    return ViewSchema(
        project=project,
        name=view.name.rsplit("/", 1)[-1],
        version=view.version,
        join_key=entity.join_key,
        key_type=entity.key_type,
        features=features,
        ttl_seconds=view.ttl.ToTimedelta().total_seconds(),
    )
