"""The resource kinds the registry stores, and how their names are built and parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.message import Message
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    project_pb2,
)

from shared.errors import InvalidArgument

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Kind:
    """A resource kind: its key in storage, its collection in names, and its message."""

    key: str
    collection: str
    message: type[Message]
    versioned: bool = False

    @property
    def top_level(self) -> bool:
        return self.key == "project"

    def name(self, project: str, resource_id: str) -> str:
        if self.top_level:
            return f"projects/{resource_id}"
        return f"projects/{project}/{self.collection}/{resource_id}"

    def parse_name(self, name: str, field: str = "name") -> tuple[str, str]:
        """`(project, resource_id)` of a resource name, or INVALID_ARGUMENT naming `field`."""
        parts = name.split("/")
        if self.top_level and len(parts) == 2 and parts[0] == "projects":
            return parts[1], parts[1]
        if (
            not self.top_level
            and len(parts) == 4
            and parts[0] == "projects"
            and parts[2] == self.collection
        ):
            return parts[1], parts[3]
        expected = self.name("{project}", "{id}")
        raise InvalidArgument(field, f"{name!r} is not a {self.key} name; expected {expected!r}")


PROJECT = Kind("project", "projects", project_pb2.Project)
ENTITY = Kind("entity", "entities", entity_pb2.Entity)
DATA_SOURCE = Kind("data_source", "dataSources", data_source_pb2.DataSource)
FEATURE_VIEW = Kind("feature_view", "featureViews", feature_view_pb2.FeatureView, versioned=True)
EMBEDDING_MODEL = Kind("embedding_model", "embeddingModels", embedding_model_pb2.EmbeddingModel)
MODEL_FEATURE_SET = Kind(
    "model_feature_set", "modelFeatureSets", model_feature_set_pb2.ModelFeatureSet
)

ALL_KINDS = (PROJECT, ENTITY, DATA_SOURCE, FEATURE_VIEW, EMBEDDING_MODEL, MODEL_FEATURE_SET)


def parse_project(parent: str, field: str = "parent") -> str:
    project, _ = PROJECT.parse_name(parent, field)
    return project


def check_id(resource_id: str, field: str) -> None:
    if not ID_PATTERN.match(resource_id):
        raise InvalidArgument(
            field,
            f"{resource_id!r} is not a valid id: use 1-63 characters of a-z, 0-9 and _, "
            "starting with a letter",
        )
