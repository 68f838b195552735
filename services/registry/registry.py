"""Registry domain: create, read, update and delete feature-store definitions.

Knows nothing of gRPC. Every write runs in one unit of work, so a rejected request leaves
storage untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import Message
from recstack.registry.v1 import feature_view_pb2

from services.registry import validation
from services.registry.adapters.repository import (
    ResourceRepository,
    StoredResource,
    decode_page_token,
    encode_page_token,
)
from services.registry.kinds import (
    DATA_SOURCE,
    EMBEDDING_MODEL,
    ENTITY,
    FEATURE_VIEW,
    MODEL_FEATURE_SET,
    PROJECT,
    Kind,
    check_id,
    parse_project,
)
from shared.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shared.values import VT

UnitOfWork = Callable[[], AbstractContextManager[ResourceRepository]]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
OUTPUT_ONLY_FIELDS = frozenset({"name", "version", "create_time", "update_time", "etag"})
# Feature-view fields that change only metadata: updating them never creates a version.
IN_PLACE_FIELDS = frozenset({"description", "tags", "owner", "online_enabled", "offline_enabled"})


def ref(kind: Kind, project: str, resource_id: str) -> str:
    return f"{kind.key}:{project}/{resource_id}"


@dataclass(frozen=True)
class Page:
    items: list[Message]
    next_page_token: str


class Registry:
    def __init__(
        self, unit_of_work: UnitOfWork, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._unit_of_work = unit_of_work
        self._clock = clock or (lambda: datetime.now(UTC))

    # --- standard methods -------------------------------------------------------------

    def create(
        self, kind: Kind, parent: str, resource_id: str, resource: Message, validate_only: bool
    ) -> Message:
        check_id(resource_id, f"{kind.key}_id")
        project = resource_id if kind.top_level else parse_project(parent)
        with self._unit_of_work() as repo:
            if not kind.top_level:
                self._require(repo, PROJECT, project, project)
            spec = _copy(resource)
            refs = self._prepare(repo, kind, project, spec)
            now = self._clock()
            record = StoredResource(kind.key, project, resource_id, 1, spec, refs, "", now, now)
            record = _stamp(kind, record)
            if validate_only:
                return record.spec
            if not repo.insert(record):
                raise AlreadyExists(f"{kind.name(project, resource_id)} already exists")
            return record.spec

    def get(self, kind: Kind, name: str, version: int = 0) -> Message:
        project, resource_id = kind.parse_name(name)
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        with self._unit_of_work() as repo:
            return self._require(repo, kind, project, resource_id, version).spec

    def list(
        self, kind: Kind, parent: str, page_size: int, page_token: str, filter_text: str
    ) -> Page:
        project = None if kind.top_level else parse_project(parent)
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        if filter_text:
            raise InvalidArgument("filter", "filtering is not supported by this server version")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            after = decode_page_token(page_token) if page_token else ""
        except ValueError:
            raise InvalidArgument("page_token", "is not a token from a previous response") from None
        with self._unit_of_work() as repo:
            records = repo.list_latest(kind.key, project, after, size + 1)
        more = len(records) > size
        records = records[:size]
        token = encode_page_token(records[-1].resource_id) if more else ""
        return Page([record.spec for record in records], token)

    def update(self, kind: Kind, resource: Message, mask_paths: list[str]) -> Message:
        name = getattr(resource, "name", "")
        if not name:
            raise InvalidArgument(f"{kind.key}.name", "is required")
        project, resource_id = kind.parse_name(name, f"{kind.key}.name")
        paths = _update_paths(kind, resource, mask_paths)
        with self._unit_of_work() as repo:
            current = self._require(repo, kind, project, resource_id)
            _check_etag(current, resource.etag, kind.key)
            spec = _copy(current.spec)
            for path in paths:
                _copy_field(resource, spec, path)
            refs = self._prepare(repo, kind, project, spec)
            new_version = kind.versioned and not set(paths) <= IN_PLACE_FIELDS
            record = replace(
                current,
                spec=spec,
                refs=refs,
                update_time=self._clock(),
                version=current.version + (1 if new_version else 0),
            )
            record = _stamp(kind, record)
            written = repo.insert(record) if new_version else repo.replace(record, current.etag)
            if not written:
                raise Aborted(f"{name} changed concurrently; read it again and retry")
            return record.spec

    def delete(self, kind: Kind, name: str, etag: str, version: int = 0) -> None:
        project, resource_id = kind.parse_name(name)
        with self._unit_of_work() as repo:
            current = self._require(repo, kind, project, resource_id, version)
            _check_etag(current, etag, kind.key)
            repo.delete(kind.key, project, resource_id, version or None)
            # Checked after the delete, inside the transaction: only removing the last
            # version of a resource can strand its dependants, and raising rolls it back.
            if repo.get(kind.key, project, resource_id) is None:
                dependants = repo.dependants(ref(kind, project, resource_id))
                if dependants:
                    raise FailedPrecondition(
                        f"{name} is used by {', '.join(dependants[:10])}; delete those first",
                        reason="HAS_DEPENDANTS",
                    )

    # --- helpers ----------------------------------------------------------------------

    def _require(
        self, repo: ResourceRepository, kind: Kind, project: str, resource_id: str, version: int = 0
    ) -> StoredResource:
        record = repo.get(kind.key, project, resource_id, version or None)
        if record is None:
            suffix = f" version {version}" if version else ""
            raise NotFound(f"{kind.name(project, resource_id)}{suffix} does not exist")
        return record

    def _prepare(
        self, repo: ResourceRepository, kind: Kind, project: str, spec: Message
    ) -> tuple[str, ...]:
        """Validate a spec, fill defaults, and return the references it holds."""
        refs: list[str] = [] if kind.top_level else [ref(PROJECT, project, project)]
        if kind is ENTITY:
            validation.validate_entity(spec)
        elif kind is DATA_SOURCE:
            validation.validate_data_source(spec)
        elif kind is EMBEDDING_MODEL:
            validation.apply_embedding_model_defaults(spec)
            validation.validate_embedding_model(spec)
        elif kind is FEATURE_VIEW:
            refs += self._prepare_feature_view(repo, project, spec)
        elif kind is MODEL_FEATURE_SET:
            refs += self._prepare_feature_set(repo, project, spec)
        return tuple(refs)

    def _prepare_feature_view(
        self, repo: ResourceRepository, project: str, view: feature_view_pb2.FeatureView
    ) -> list[str]:
        entity = self._require_ref(repo, ENTITY, project, view.entity, "feature_view.entity")
        validation.validate_feature_view(view, entity.spec.join_key, entity.spec.key_type)
        refs = [ref(ENTITY, project, view.entity)]
        if view.source:
            self._require_ref(repo, DATA_SOURCE, project, view.source, "feature_view.source")
            refs.append(ref(DATA_SOURCE, project, view.source))
        names = {field.name for field in view.fields}
        for index, field in enumerate(view.fields):
            if not field.HasField("production"):
                continue
            path = f"feature_view.fields[{index}].production"
            self._require_ref(
                repo, EMBEDDING_MODEL, project, field.production.embedding_model, path
            )
            if field.value_type != VT.VALUE_TYPE_FLOAT_LIST:
                raise InvalidArgument(path, "an LLM_EMBEDDING field must be VALUE_TYPE_FLOAT_LIST")
            if field.production.input_field not in names:
                raise InvalidArgument(
                    f"{path}.input_field", f"{field.production.input_field!r} is not a field"
                )
            refs.append(ref(EMBEDDING_MODEL, project, field.production.embedding_model))
        return refs

    def _prepare_feature_set(
        self, repo: ResourceRepository, project: str, spec: Message
    ) -> list[str]:
        if not spec.features:
            raise InvalidArgument("model_feature_set.features", "list at least one feature")
        del spec.resolved_features[:]
        refs: list[str] = []
        for index, text in enumerate(spec.features):
            path = f"model_feature_set.features[{index}]"
            view_id, _, feature = text.partition(":")
            if not view_id or not feature:
                raise InvalidArgument(path, f"{text!r} is not `view:feature` or `view:*`")
            view = self._require_ref(repo, FEATURE_VIEW, project, view_id, path)
            fields = [field.name for field in view.spec.fields]
            chosen = fields if feature == "*" else [feature]
            if feature != "*" and feature not in fields:
                raise InvalidArgument(path, f"feature view {view_id!r} has no field {feature!r}")
            for name in chosen:
                spec.resolved_features.add(feature_view=view_id, version=view.version, feature=name)
            refs.append(ref(FEATURE_VIEW, project, view_id))
        return refs

    def _require_ref(
        self, repo: ResourceRepository, kind: Kind, project: str, resource_id: str, field: str
    ) -> StoredResource:
        if not resource_id:
            raise InvalidArgument(field, "is required")
        record = repo.get(kind.key, project, resource_id)
        if record is None:
            raise NotFound(f"{field}: {kind.name(project, resource_id)} does not exist")
        return record


def _copy(message: Message) -> Message:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _stamp(kind: Kind, record: StoredResource) -> StoredResource:
    """Fill the output-only fields of the stored spec."""
    spec = record.spec
    spec.name = kind.name(record.project, record.resource_id)
    spec.create_time.FromDatetime(record.create_time)
    spec.update_time.FromDatetime(record.update_time)
    spec.etag = uuid.uuid4().hex
    if kind.versioned:
        spec.version = record.version
    return replace(record, spec=spec, etag=spec.etag)


def _check_etag(current: StoredResource, etag: str, field: str) -> None:
    if etag and etag != current.etag:
        raise Aborted(
            f"{field}.etag {etag!r} is stale (current {current.etag!r}): read it again and retry",
            reason="ETAG_MISMATCH",
        )


def _update_paths(kind: Kind, resource: Message, mask_paths: list[str]) -> list[str]:
    fields = {field.name for field in resource.DESCRIPTOR.fields}
    paths = list(mask_paths) or sorted(fields - OUTPUT_ONLY_FIELDS)
    for path in paths:
        top = path.split(".")[0]
        if top not in fields:
            raise InvalidArgument("update_mask", f"{kind.key} has no field {path!r}")
        if top in OUTPUT_ONLY_FIELDS:
            raise InvalidArgument("update_mask", f"{path!r} is output only")
    return paths


def _copy_field(source: Message, target: Message, path: str) -> None:
    top = path.split(".")[0]
    descriptor = source.DESCRIPTOR.fields_by_name[top]
    if descriptor.is_repeated:
        target.ClearField(top)
        getattr(target, top).MergeFrom(getattr(source, top))
    elif descriptor.message_type is not None:
        target.ClearField(top)
        if source.HasField(top):
            getattr(target, top).CopyFrom(getattr(source, top))
    else:
        setattr(target, top, getattr(source, top))
