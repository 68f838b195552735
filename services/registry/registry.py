"""Registry domain: create, read, update, delete and declaratively apply definitions.

Knows nothing of gRPC. Every request runs in one unit of work, so a rejected request (or a
rejected definition anywhere in an apply) leaves storage untouched.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message

from services.registry.adapters.repository import Change, ResourceRepository, StoredResource
from services.registry.kinds import (
    DATA_SOURCE,
    EMBEDDING_MODEL,
    ENTITY,
    FEATURE_VIEW,
    MODEL,
    MODEL_FEATURE_SET,
    PROJECT,
    Kind,
    check_id,
    parse_project,
)
from services.registry.policy import DefinitionPolicy, present
from services.registry.preparation import prepare, ref
from shared.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quoted,
)
from shared.standard_methods import (
    MAX_PAGE_SIZE,
    Page,
    PageTokens,
    copy_fields,
    list_page,
    page_size,
    parse_filter,
    update_paths,
)
from shared.standard_methods import check_etag as check_current_etag

UnitOfWork = Callable[[], AbstractContextManager[ResourceRepository]]
# Called inside the unit of work, before it commits, with (kind, stored record, repository) for
# every version created or deleted: what it writes commits with the change, or not at all.
VersionListener = Callable[[str, StoredResource, ResourceRepository], None]

MAX_CHANGES = 1000
OUTPUT_ONLY_FIELDS = frozenset(
    {"name", "version", "create_time", "update_time", "etag", "resolved_features"}
)
# Feature-view fields that change only metadata: updating them never creates a version.
# TTL changes how values are served, not how they are stored, so it needs no new table.
IN_PLACE_FIELDS = frozenset(
    {"description", "tags", "owner", "online_enabled", "offline_enabled", "ttl"}
)
# Apply creates in this order (references first) and prunes in the reverse.
APPLY_ORDER = (ENTITY, DATA_SOURCE, EMBEDDING_MODEL, FEATURE_VIEW, MODEL_FEATURE_SET, MODEL)


class Action(enum.Enum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    NEW_VERSION = "NEW_VERSION"
    DELETE = "DELETE"
    UNCHANGED = "UNCHANGED"


@dataclass(frozen=True)
class Declared:
    """One resource of an apply: its kind, id and desired spec."""

    kind: Kind
    resource_id: str
    spec: Message


@dataclass(frozen=True)
class PlanStep:
    name: str
    action: Action
    changed_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Events:
    """The listeners told of each version created or deleted, inside the unit of work."""

    created: VersionListener | None = None
    deleted: VersionListener | None = None

    def on_created(self, kind: str, record: StoredResource, repo: ResourceRepository) -> None:
        if self.created is not None:
            self.created(kind, record, repo)

    def on_deleted(self, kind: str, record: StoredResource, repo: ResourceRepository) -> None:
        if self.deleted is not None:
            self.deleted(kind, record, repo)


class _DryRun(Exception):
    """Raised at the end of a validate-only apply so its unit of work rolls back."""

    def __init__(self, steps: list[PlanStep]) -> None:
        super().__init__("dry run")
        self.steps = steps


class Registry:
    def __init__(
        self,
        unit_of_work: UnitOfWork,
        *,
        clock: Callable[[], datetime] | None = None,
        on_version_created: VersionListener | None = None,
        on_version_deleted: VersionListener | None = None,
        policy: DefinitionPolicy | None = None,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._tokens = page_tokens or PageTokens()
        self._policy = policy or DefinitionPolicy()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._events = _Events(on_version_created, on_version_deleted)

    # --- standard methods -------------------------------------------------------------

    def create(
        self, kind: Kind, parent: str, resource_id: str, resource: Message, validate_only: bool
    ) -> Message:
        check_id(resource_id, f"{kind.key}_id")
        project = resource_id if kind.top_level else parse_project(parent)
        events = self._events
        with self._unit_of_work() as repo:
            if not kind.top_level:
                _require(repo, PROJECT, project, project)
            writer = _Writer(repo, self._clock(), events, self._policy)
            record = writer.create(kind, project, resource_id, resource, write=not validate_only)
        return record.spec

    def get(self, kind: Kind, name: str, version: int = 0) -> Message:
        project, resource_id = kind.parse_name(name)
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        with self._unit_of_work() as repo:
            return present(kind, _require(repo, kind, project, resource_id, version).spec)

    def list(
        self, kind: Kind, parent: str, requested_size: int, page_token: str, filter_text: str
    ) -> Page:
        project = None if kind.top_level else parse_project(parent)
        size = page_size(requested_size)
        conditions = parse_filter(filter_text, kind.message.DESCRIPTOR)
        with self._unit_of_work() as repo:
            records, token = list_page(
                lambda after, limit: repo.list_latest(
                    kind.key, project, after or "", limit, conditions
                ),
                lambda record: record.resource_id,
                scope=f"{kind.key}:{project}:{filter_text}",
                size=size,
                token=page_token,
                tokens=self._tokens,
            )
        return Page([present(kind, record.spec) for record in records], token)

    def update(self, kind: Kind, resource: Message, mask_paths: list[str]) -> Message:
        name = getattr(resource, "name", "")
        if not name:
            raise InvalidArgument(f"{kind.key}.name", "is required")
        project, resource_id = kind.parse_name(name, f"{kind.key}.name")
        output_only = OUTPUT_ONLY_FIELDS | set(kind.state_fields)
        paths = update_paths(resource.DESCRIPTOR, mask_paths, output_only, kind.key)
        events = self._events
        with self._unit_of_work() as repo:
            current = _require(repo, kind, project, resource_id)
            check_etag(current, resource.etag, kind.key)
            desired = _copy(current.spec)
            copy_fields(resource, desired, paths)
            record, _, _ = _Writer(repo, self._clock(), events, self._policy).update(
                kind, current, desired
            )
        return record.spec

    def delete(self, kind: Kind, name: str, etag: str, version: int = 0) -> None:
        project, resource_id = kind.parse_name(name)
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        events = self._events
        with self._unit_of_work() as repo:
            current = _require(repo, kind, project, resource_id, version)
            check_etag(current, etag, kind.key)
            _Writer(repo, self._clock(), events, self._policy).delete(
                kind, project, resource_id, version
            )

    # --- declarative apply ------------------------------------------------------------

    def apply(
        self, parent: str, declared: Sequence[Declared], validate_only: bool, prune: bool
    ) -> list[PlanStep]:
        """Bring the project to the declared state in one transaction; return the plan."""
        project = parse_project(parent)
        check_id(project, "parent")
        _check_declarations(declared)
        events = self._events
        try:
            with self._unit_of_work() as repo:
                writer = _Writer(repo, self._clock(), events, self._policy)
                steps = self._apply_in(writer, repo, project, declared, prune)
                if validate_only:
                    raise _DryRun(steps)
        except _DryRun as dry_run:
            return dry_run.steps
        return steps

    def _apply_in(
        self,
        writer: _Writer,
        repo: ResourceRepository,
        project: str,
        declared: Sequence[Declared],
        prune: bool,
    ) -> list[PlanStep]:
        steps = []
        if repo.get(PROJECT.key, project, project) is None:
            writer.create(PROJECT, project, project, PROJECT.message())
            steps.append(PlanStep(PROJECT.name(project, project), Action.CREATE))
        positions = {id(item): index for index, item in enumerate(declared)}
        by_kind = {kind.key: [d for d in declared if d.kind is kind] for kind in APPLY_ORDER}
        for kind in APPLY_ORDER:
            for item in by_kind[kind.key]:
                with _blame(positions[id(item)], item):
                    steps.append(writer.upsert(kind, project, item.resource_id, item.spec))
        if prune:
            for kind in reversed(APPLY_ORDER):
                wanted = {item.resource_id for item in by_kind[kind.key]}
                for record in _all_latest(repo, kind, project):
                    if record.resource_id not in wanted:
                        writer.delete(kind, project, record.resource_id, 0)
                        steps.append(
                            PlanStep(kind.name(project, record.resource_id), Action.DELETE)
                        )
        return steps

    # --- change feed ------------------------------------------------------------------

    def changes(self, since_revision: int, page_size: int) -> tuple[list[Change], int, int]:
        """Writes after `since_revision` (oldest first), the revision to ask from next, and
        the newest revision of the log."""
        if since_revision < 0:
            raise InvalidArgument("since_revision", "must not be negative")
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        limit = min(page_size or MAX_CHANGES, MAX_CHANGES)
        with self._unit_of_work() as repo:
            found = repo.changes_since(since_revision, limit)
            head = repo.head_revision()
        return found, found[-1].revision if found else since_revision, head


class _Writer:
    """Writes within one unit of work, telling the version listeners as it goes."""

    def __init__(
        self, repo: ResourceRepository, now: datetime, events: _Events, policy: DefinitionPolicy
    ) -> None:
        self._repo = repo
        self._policy = policy
        self._now = now
        self._events = events

    def create(
        self, kind: Kind, project: str, resource_id: str, resource: Message, write: bool = True
    ) -> StoredResource:
        spec = _copy(resource)
        for name in kind.state_fields:
            spec.ClearField(name)
        refs = prepare(self._repo, kind, project, spec, self._policy)
        record = StoredResource(
            kind.key, project, resource_id, 1, spec, refs, "", self._now, self._now
        )
        record = _stamp(kind, record)
        if not write:
            return record
        if not self._repo.insert(record):
            raise AlreadyExists(f"{kind.name(project, resource_id)} already exists")
        self._events.on_created(kind.key, record, self._repo)
        return record

    def update(
        self, kind: Kind, current: StoredResource, desired: Message
    ) -> tuple[StoredResource, Action, tuple[str, ...]]:
        spec = _copy(desired)
        copy_fields(current.spec, spec, kind.state_fields)
        refs = prepare(self._repo, kind, current.project, spec, self._policy)
        changed = _changed_fields(current.spec, spec)
        if not changed:
            return current, Action.UNCHANGED, ()
        new_version = kind.versioned and not set(changed) <= IN_PLACE_FIELDS
        record = replace(
            current,
            spec=spec,
            refs=refs,
            update_time=self._now,
            version=current.version + (1 if new_version else 0),
        )
        record = _stamp(kind, record)
        if new_version:
            written = self._repo.insert(record)
            if written:
                self._events.on_created(kind.key, record, self._repo)
        else:
            written = self._repo.replace(record, current.etag)
        if not written:
            raise Aborted(f"{record.spec.name} changed concurrently; read it again and retry")
        return record, Action.NEW_VERSION if new_version else Action.UPDATE, changed

    def upsert(self, kind: Kind, project: str, resource_id: str, desired: Message) -> PlanStep:
        check_id(resource_id, "id")
        name = kind.name(project, resource_id)
        current = self._repo.get(kind.key, project, resource_id)
        if current is None:
            self.create(kind, project, resource_id, desired)
            return PlanStep(name, Action.CREATE)
        _, action, changed = self.update(kind, current, desired)
        return PlanStep(name, action, changed)

    def delete(self, kind: Kind, project: str, resource_id: str, version: int) -> None:
        doomed = [
            record
            for record in self._repo.list_versions(kind.key, project, resource_id)
            if version in (0, record.version)
        ]
        self._repo.delete(kind.key, project, resource_id, version or None)
        # Checked after the delete, inside the transaction: only removing the last
        # version of a resource can strand its dependants, and raising rolls it back.
        if self._repo.get(kind.key, project, resource_id) is None:
            dependants = self._repo.dependants(ref(kind, project, resource_id))
            if dependants:
                raise FailedPrecondition(
                    f"{kind.name(project, resource_id)} is used by "
                    f"{', '.join(dependants[:10])}; delete those first",
                    reason="HAS_DEPENDANTS",
                )
        for record in doomed:
            self._events.on_deleted(kind.key, record, self._repo)


def _require(
    repo: ResourceRepository, kind: Kind, project: str, resource_id: str, version: int = 0
) -> StoredResource:
    record = repo.get(kind.key, project, resource_id, version or None)
    if record is None:
        suffix = f" version {version}" if version else ""
        raise NotFound(f"{kind.name(project, resource_id)}{suffix} does not exist")
    return record


def _all_latest(repo: ResourceRepository, kind: Kind, project: str) -> list[StoredResource]:
    records: list[StoredResource] = []
    while page := repo.list_latest(
        kind.key, project, records[-1].resource_id if records else "", MAX_PAGE_SIZE
    ):
        records += page
    return records


@contextmanager
def _blame(index: int, item: Declared) -> Iterator[None]:
    """Name the definition (by its position in the request) in any error it causes."""
    try:
        yield
    except InvalidArgument as error:
        raise InvalidArgument(
            f"definitions[{index}].{error.field}", error.description, reason=error.reason
        ) from error
    except DomainError as error:
        error.message = (
            f"definitions[{index}] ({item.kind.key} {item.resource_id}): {error.message}"
        )
        error.args = (error.message,)
        raise


def _check_declarations(declared: Sequence[Declared]) -> None:
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(declared):
        key = (item.kind.key, item.resource_id)
        if key in seen:
            raise InvalidArgument(
                f"definitions[{index}].id",
                f"{item.kind.key} {quoted(item.resource_id)} declared twice",
            )
        seen.add(key)


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


def _changed_fields(current: Message, desired: Message) -> tuple[str, ...]:
    """Top-level fields whose values differ, output-only fields (but derived ones) ignored."""

    def as_dict(message: Message) -> dict[str, object]:
        values = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return {
            k: v for k, v in values.items() if k not in OUTPUT_ONLY_FIELDS - {"resolved_features"}
        }

    before, after = as_dict(current), as_dict(desired)
    return tuple(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))


def check_etag(current: StoredResource, etag: str, field_name: str) -> None:
    check_current_etag(current.etag, etag, field_name)
