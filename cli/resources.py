"""The registry's resource kinds as the CLI names, requests and tabulates them.

One row per kind drives YAML `kind:` values, command-line kind words, RPC and message names
and list columns, so the commands are written once for all seven kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from recstack.registry.v1 import registry_service_pb2 as pb

from cli.errors import UsageError
from cli.friendly import format_duration, short_enum
from shared.values import VT


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], object]


@dataclass(frozen=True)
class ResourceType:
    kind: str  # YAML `kind:` and the label in plans, e.g. FeatureView
    key: str  # request field and Definition arm, e.g. feature_view
    plural: str  # list response field, e.g. feature_views
    collection: str  # segment of resource names, e.g. featureViews
    message: type[Message]
    columns: tuple[Column, ...]
    declarable: bool = True
    versioned: bool = False

    @property
    def word(self) -> str:
        return self.key.replace("_", "-")

    @property
    def plural_word(self) -> str:
        return self.plural.replace("_", "-")

    def rpc(self, verb: str) -> str:
        if verb == "List":
            return "List" + "".join(part.capitalize() for part in self.plural.split("_"))
        return verb + self.message.DESCRIPTOR.name

    def request(self, verb: str, **fields: Any) -> Message:
        return getattr(pb, f"{self.rpc(verb)}Request")(**fields)

    def list_response(self, items: list[Message]) -> Message:
        return getattr(pb, f"{self.rpc('List')}Response")(**{self.plural: items})

    def name(self, project: str, resource_id: str) -> str:
        if self.key == "project":
            return f"projects/{resource_id}"
        return f"projects/{project}/{self.collection}/{resource_id}"


def project_name(project: str) -> str:
    return PROJECT.name(project, project)


def resource_id(message: Message) -> str:
    return message.name.rsplit("/", 1)[-1]


def _enum(message: Message, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    return short_enum(descriptor.values_by_number[getattr(message, field)].name, descriptor)


def _value_type(number: int) -> str:
    return short_enum(VT.Name(number), VT.DESCRIPTOR)


def _source_location(source: data_source_pb2.DataSource) -> str:
    kind = source.WhichOneof("kind")
    if kind == "file":
        return f"{source.file.path} ({_enum(source.file, 'format')})"
    if kind == "postgres":
        return source.postgres.table or source.postgres.query
    if kind == "push":
        return ", ".join(f"{f.name} {_value_type(f.value_type)}" for f in source.push.schema)
    return ""


def _ttl(view: feature_view_pb2.FeatureView) -> str:
    seconds = view.ttl.ToTimedelta().total_seconds()
    return format_duration(f"{int(seconds)}s") if seconds else "never"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


ID = Column("ID", resource_id)
DESCRIPTION = Column("DESCRIPTION", lambda m: m.description)

PROJECT = ResourceType(
    "Project",
    "project",
    "projects",
    "projects",
    project_pb2.Project,
    (ID, DESCRIPTION),
    declarable=False,
)
ENTITY = ResourceType(
    "Entity",
    "entity",
    "entities",
    "entities",
    entity_pb2.Entity,
    (
        ID,
        Column("JOIN KEY", lambda m: m.join_key),
        Column("KEY TYPE", lambda m: _value_type(m.key_type)),
        DESCRIPTION,
    ),
)
DATA_SOURCE = ResourceType(
    "DataSource",
    "data_source",
    "data_sources",
    "dataSources",
    data_source_pb2.DataSource,
    (
        ID,
        Column("KIND", lambda m: (m.WhichOneof("kind") or "").upper()),
        Column("LOCATION / SCHEMA", _source_location),
        Column("EVENT TIMESTAMP", lambda m: m.event_timestamp_column),
    ),
)
FEATURE_VIEW = ResourceType(
    "FeatureView",
    "feature_view",
    "feature_views",
    "featureViews",
    feature_view_pb2.FeatureView,
    (
        ID,
        Column("VERSION", lambda m: m.version),
        Column("TYPE", lambda m: _enum(m, "type")),
        Column("ENTITY", lambda m: m.entity),
        Column("SOURCE", lambda m: m.source),
        Column("FIELDS", lambda m: len(m.fields)),
        Column("TTL", _ttl),
        Column("ONLINE", lambda m: _yes(m.online_enabled)),
        Column("OFFLINE", lambda m: _yes(m.offline_enabled)),
    ),
    versioned=True,
)
EMBEDDING_MODEL = ResourceType(
    "EmbeddingModel",
    "embedding_model",
    "embedding_models",
    "embeddingModels",
    embedding_model_pb2.EmbeddingModel,
    (
        ID,
        Column("PROVIDER", lambda m: _enum(m, "provider")),
        Column("MODEL", lambda m: m.model_name),
        Column("DIMENSION", lambda m: m.dimension),
        Column("MAX TOKENS", lambda m: m.max_input_tokens),
        Column("BATCH", lambda m: m.batch_size),
        Column("CONCURRENCY", lambda m: m.concurrency),
    ),
)
MODEL_FEATURE_SET = ResourceType(
    "ModelFeatureSet",
    "model_feature_set",
    "model_feature_sets",
    "modelFeatureSets",
    model_feature_set_pb2.ModelFeatureSet,
    (
        ID,
        Column("FEATURES", lambda m: ", ".join(m.features)),
        Column("RESOLVED", lambda m: len(m.resolved_features)),
        Column("LABEL", lambda m: m.label),
        Column("ENTITIES", lambda m: ", ".join(m.entities)),
    ),
)

MODEL = ResourceType(
    "Model",
    "model",
    "models",
    "models",
    model_pb2.Model,
    (
        ID,
        Column("ACTIVE", lambda m: m.active_version or "-"),
        Column("VERSIONS", lambda m: m.last_version),
        Column("ROLLBACK TO", lambda m: m.rollback_versions[0] if m.rollback_versions else "-"),
        DESCRIPTION,
    ),
)

ALL = (PROJECT, ENTITY, DATA_SOURCE, FEATURE_VIEW, EMBEDDING_MODEL, MODEL_FEATURE_SET, MODEL)
DECLARABLE = {rtype.kind: rtype for rtype in ALL if rtype.declarable}
BY_COLLECTION = {rtype.collection: rtype for rtype in ALL}
# Command lines accept the singular and the plural word for every verb, as kubectl does.
BY_WORD = {word: rtype for rtype in ALL for word in (rtype.word, rtype.plural_word)}


def by_word(word: str) -> ResourceType:
    try:
        return BY_WORD[word]
    except KeyError:
        kinds = ", ".join(BY_WORD)
        raise UsageError(f"unknown resource kind {word!r}; use one of {kinds}") from None


def parse_reference(rtype: ResourceType, reference: str, project: str | None) -> str:
    """Resource name from `PROJECT/ID`, `ID` with --project, or a full `projects/…` name."""
    if reference.startswith("projects/"):
        return _checked_name(rtype, reference)
    if rtype is PROJECT:
        return rtype.name(reference, reference)
    owner, slash, rid = reference.rpartition("/")
    if slash and project and owner != project:
        raise UsageError(f"{reference!r} names project {owner!r} but --project is {project!r}")
    owner = owner or project or ""
    if not owner or not rid or "/" in owner:
        raise UsageError(
            f"give the {rtype.word} as PROJECT/ID (or ID with --project), not {reference!r}"
        )
    return rtype.name(owner, rid)


def _checked_name(rtype: ResourceType, name: str) -> str:
    parts = name.split("/")
    shape = rtype.name("PROJECT", "ID").split("/")
    fixed = [index for index, part in enumerate(shape) if part not in ("PROJECT", "ID")]
    if len(parts) != len(shape) or not all(parts) or any(parts[i] != shape[i] for i in fixed):
        raise UsageError(f"{name!r} is not a {rtype.word} name like {'/'.join(shape)!r}")
    return name


# The recommend service's resources, named `scenes/{id}` and `experiments/{id}`.
SERVED_COLLECTIONS = {"scenes": "Scene", "experiments": "Experiment"}


def kind_of_name(name: str) -> tuple[str, str]:
    """`(kind, id)` of a resource name, e.g. `("FeatureView", "user_profile")`."""
    parts = name.split("/")
    if len(parts) == 2 and parts[0] in SERVED_COLLECTIONS:
        return SERVED_COLLECTIONS[parts[0]], parts[1]
    if len(parts) == 2:
        return PROJECT.kind, parts[1]
    rtype = BY_COLLECTION.get(parts[2]) if len(parts) == 4 else None
    return (rtype.kind, parts[3]) if rtype else ("", name)
