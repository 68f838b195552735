"""Validation that needs stored definitions: references, defaults, derived fields.

Each kind has one preparer, looked up by kind key; a preparer validates a spec in place
(filling defaults and output-only derived fields) and returns the references it holds.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message
from recstack.registry.v1 import feature_view_pb2

from services.registry import transformations, validation
from services.registry.adapters.repository import ResourceRepository, StoredResource
from services.registry.kinds import (
    DATA_SOURCE,
    EMBEDDING_MODEL,
    ENTITY,
    FEATURE_VIEW,
    MODEL,
    MODEL_FEATURE_SET,
    PROJECT,
    Kind,
)
from services.registry.policy import DefinitionPolicy
from shared.errors import InvalidArgument, NotFound, quoted
from shared.values import VT

Preparer = Callable[[ResourceRepository, str, Message], list[str]]


def ref(kind: Kind, project: str, resource_id: str) -> str:
    return f"{kind.key}:{project}/{resource_id}"


def prepare(
    repo: ResourceRepository,
    kind: Kind,
    project: str,
    spec: Message,
    policy: DefinitionPolicy | None = None,
) -> tuple[str, ...]:
    """Validate `spec` (filling defaults), check it against the operator's policy, and return
    the resources it references."""
    if kind.top_level:
        return ()
    refs = PREPARERS[kind.key](repo, project, spec)
    (policy or DefinitionPolicy()).check(kind.key, project, spec)
    return (ref(PROJECT, project, project), *refs)


def require_ref(
    repo: ResourceRepository, kind: Kind, project: str, resource_id: str, field: str
) -> StoredResource:
    if not resource_id:
        raise InvalidArgument(field, "is required")
    record = repo.get(kind.key, project, resource_id)
    if record is None:
        raise NotFound(f"{field}: {kind.name(project, resource_id)} does not exist")
    return record


def _entity(_repo: ResourceRepository, _project: str, spec: Message) -> list[str]:
    validation.validate_entity(spec)
    return []


def _data_source(_repo: ResourceRepository, _project: str, spec: Message) -> list[str]:
    validation.validate_data_source(spec)
    return []


def _embedding_model(_repo: ResourceRepository, _project: str, spec: Message) -> list[str]:
    validation.apply_embedding_model_defaults(spec)
    validation.validate_embedding_model(spec)
    return []


def _model(_repo: ResourceRepository, _project: str, _spec: Message) -> list[str]:
    # Everything a model holds besides metadata is its versions' (and server-maintained).
    return []


def _feature_view(
    repo: ResourceRepository, project: str, view: feature_view_pb2.FeatureView
) -> list[str]:
    entity = require_ref(repo, ENTITY, project, view.entity, "feature_view.entity")
    validation.validate_feature_view(view, entity.spec.join_key, entity.spec.key_type)
    refs = [ref(ENTITY, project, view.entity)]
    source = None
    if view.source:
        source = require_ref(repo, DATA_SOURCE, project, view.source, "feature_view.source").spec
        refs.append(ref(DATA_SOURCE, project, view.source))
    refs += _productions(repo, project, view)
    transformations.validate(view, source)
    return refs


def _productions(
    repo: ResourceRepository, project: str, view: feature_view_pb2.FeatureView
) -> list[str]:
    names = {field.name for field in view.fields}
    refs = []
    for index, field in enumerate(view.fields):
        if not field.HasField("production"):
            continue
        path = f"feature_view.fields[{index}].production"
        production = field.production
        if production.transform != feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING:
            raise InvalidArgument(f"{path}.transform", "must be TRANSFORM_LLM_EMBEDDING")
        require_ref(repo, EMBEDDING_MODEL, project, production.embedding_model, path)
        if field.value_type != VT.VALUE_TYPE_FLOAT_LIST:
            raise InvalidArgument(path, "an LLM_EMBEDDING field must be VALUE_TYPE_FLOAT_LIST")
        if production.input_field not in names or production.input_field == field.name:
            raise InvalidArgument(
                f"{path}.input_field",
                f"{quoted(production.input_field)} is not another field of the view",
            )
        refs.append(ref(EMBEDDING_MODEL, project, production.embedding_model))
    return refs


def _model_feature_set(repo: ResourceRepository, project: str, spec: Message) -> list[str]:
    if not spec.features:
        raise InvalidArgument("model_feature_set.features", "list at least one feature")
    del spec.resolved_features[:]
    refs: list[str] = []
    for index, text in enumerate(spec.features):
        path = f"model_feature_set.features[{index}]"
        view_id, _, feature = text.partition(":")
        if not view_id or not feature:
            raise InvalidArgument(path, f"{quoted(text)} is not `view:feature` or `view:*`")
        view = require_ref(repo, FEATURE_VIEW, project, view_id, path)
        fields = [field.name for field in view.spec.fields]
        if feature != "*" and feature not in fields:
            raise InvalidArgument(
                path, f"feature view {quoted(view_id)} has no field {quoted(feature)}"
            )
        for name in fields if feature == "*" else [feature]:
            spec.resolved_features.add(feature_view=view_id, version=view.version, feature=name)
        refs.append(ref(FEATURE_VIEW, project, view_id))
    for index, entity in enumerate(spec.entities):
        require_ref(repo, ENTITY, project, entity, f"model_feature_set.entities[{index}]")
        refs.append(ref(ENTITY, project, entity))
    return refs


PREPARERS: dict[str, Preparer] = {
    ENTITY.key: _entity,
    DATA_SOURCE.key: _data_source,
    EMBEDDING_MODEL.key: _embedding_model,
    FEATURE_VIEW.key: _feature_view,
    MODEL_FEATURE_SET.key: _model_feature_set,
    MODEL.key: _model,
}
