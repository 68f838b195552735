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
    model_pb2,
    project_pb2,
)

from shared.errors import InvalidArgument, quoted

# Matched with `fullmatch`: `$` would also accept a trailing newline.
ID_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Version numbers are stored as int32.
MAX_VERSION = 2**31 - 1
VERSION_NAME = re.compile(r"projects/([^/]+)/models/([^/]+)/versions/([1-9][0-9]{0,9})")


@dataclass(frozen=True)
class Kind:
    """A resource kind: its key in storage, its collection in names, and its message."""

    key: str
    collection: str
    message: type[Message]
    versioned: bool = False
    # Output-only fields the server maintains (a model's activation state): carried over
    # from the stored spec on every update and apply, cleared on create.
    state_fields: tuple[str, ...] = ()
    # A child kind (ModelVersion) is stored as the numbered versions of its parent's id, so
    # its name is the parent's name, the collection and the number.
    parent: Kind | None = None

    @property
    def top_level(self) -> bool:
        return self.key == "project"

    def name(self, project: str, resource_id: str, version: int = 0) -> str:
        if self.parent is not None:
            return f"{self.parent.name(project, resource_id)}/{self.collection}/{version}"
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
        raise InvalidArgument(
            field, f"{quoted(name)} is not a {self.key} name; expected {quoted(expected)}"
        )


PROJECT = Kind("project", "projects", project_pb2.Project)
ENTITY = Kind("entity", "entities", entity_pb2.Entity)
DATA_SOURCE = Kind("data_source", "dataSources", data_source_pb2.DataSource)
FEATURE_VIEW = Kind("feature_view", "featureViews", feature_view_pb2.FeatureView, versioned=True)
EMBEDDING_MODEL = Kind("embedding_model", "embeddingModels", embedding_model_pb2.EmbeddingModel)
MODEL_FEATURE_SET = Kind(
    "model_feature_set", "modelFeatureSets", model_feature_set_pb2.ModelFeatureSet
)
MODEL = Kind(
    "model",
    "models",
    model_pb2.Model,
    state_fields=("active_version", "rollback_versions", "last_version"),
)
MODEL_VERSION = Kind("model_version", "versions", model_pb2.ModelVersion, parent=MODEL)

# The kinds with the standard methods of `registry.Registry` (and the servicer's template).
ALL_KINDS = (
    PROJECT,
    ENTITY,
    DATA_SOURCE,
    FEATURE_VIEW,
    EMBEDDING_MODEL,
    MODEL_FEATURE_SET,
    MODEL,
)
# Every kind in storage; model versions have their own methods (`models.ModelRegistry`).
STORED_KINDS = (*ALL_KINDS, MODEL_VERSION)


def parse_version_name(name: str, field: str = "name") -> tuple[str, str, int]:
    """`(project, model_id, version)` of a ModelVersion name, or INVALID_ARGUMENT naming `field`."""
    match = VERSION_NAME.fullmatch(name)
    if match is not None and int(match.group(3)) <= MAX_VERSION:
        project, model_id, number = match.groups()
        return project, model_id, int(number)
    raise InvalidArgument(
        field,
        f"{name!r} is not a model version name; expected "
        "'projects/{project}/models/{model}/versions/{version}' with a version of 1 to 2147483647",
    )


def parse_project(parent: str, field: str = "parent") -> str:
    project, _ = PROJECT.parse_name(parent, field)
    return project


def check_id(resource_id: str, field: str) -> None:
    if not ID_PATTERN.fullmatch(resource_id):
        raise InvalidArgument(
            field,
            f"{quoted(resource_id)} is not a valid id: use 1-63 characters of a-z, 0-9 and _, "
            "starting with a letter",
        )
