"""Scenes and experiments: the standard methods (AIP-131..135) over a unit of work.

Knows nothing of gRPC or SQL. Every write validates first and runs in one unit of work, so a
rejected request leaves storage untouched; updates and deletes are conditional on the etag
read, so a concurrent writer's change is never silently overwritten (ABORTED instead).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import structlog
from google.protobuf import field_mask_pb2
from recstack.recommend.v1 import experiment_pb2, scene_pb2

from services.recommend import validation
from services.recommend.experiments import OverrideError, apply_overrides, variant_overrides
from services.recommend.pipeline import StageRegistry
from shared.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shared.standard_methods import (
    MAX_PAGE_SIZE,
    Page,
    PageTokens,
    check_etag,
    list_page,
    page_size,
)

log = structlog.get_logger(__name__)

OUTPUT_ONLY_FIELDS = frozenset({"name", "create_time", "update_time", "etag"})
# Both kinds carry `name`, `etag` and the two timestamps.
Resource = scene_pb2.Scene | experiment_pb2.Experiment


@dataclass(frozen=True)
class Kind:
    """A resource kind: its storage key, its collection in names, and its message."""

    key: str
    collection: str
    message: type[Resource]

    def name(self, resource_id: str) -> str:
        return f"{self.collection}/{resource_id}"

    def parse_name(self, name: str, field: str = "name") -> str:
        collection, _, resource_id = name.partition("/")
        if collection != self.collection or not validation.ID_PATTERN.match(resource_id):
            raise InvalidArgument(
                field, f"{name!r} is not a {self.key} name; expected '{self.collection}/{{id}}'"
            )
        return resource_id


SCENE = Kind("scene", "scenes", scene_pb2.Scene)
EXPERIMENT = Kind("experiment", "experiments", experiment_pb2.Experiment)


@dataclass(frozen=True)
class StoredResource:
    kind: str
    resource_id: str
    spec: Resource
    etag: str
    create_time: datetime
    update_time: datetime


class ResourceRepository(Protocol):
    def insert(self, record: StoredResource) -> bool:
        """False when the id is taken."""
        ...

    def get(self, kind: str, resource_id: str) -> StoredResource | None: ...
    def list(self, kind: str, after_id: str, limit: int) -> list[StoredResource]: ...

    def replace(self, record: StoredResource, expected_etag: str) -> bool:
        """False when the stored etag is no longer `expected_etag`."""
        ...

    def delete(self, kind: str, resource_id: str, expected_etag: str) -> bool: ...
    def experiments_of(self, scene_id: str) -> list[StoredResource]: ...

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        """Writes after `revision`, oldest first (the change log)."""
        ...

    def head_revision(self) -> int: ...


@dataclass(frozen=True)
class Change:
    revision: int
    kind: str
    resource_id: str


UnitOfWork = Callable[[], AbstractContextManager[ResourceRepository]]


@dataclass(frozen=True)
class ServingSnapshot:
    """A scene and its experiments as read together for one request."""

    scene: scene_pb2.Scene
    experiments: list[experiment_pb2.Experiment]


class Catalog:
    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stages: StageRegistry,
        clock: Callable[[], datetime] | None = None,
        *,
        refresh_seconds: float = 1.0,
        check_references: Callable[[scene_pb2.Scene], None] | None = None,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._tokens = page_tokens or PageTokens()
        self._unit_of_work = unit_of_work
        self._stages = stages
        # What a scene names must exist in the registry (see `references`); None skips it.
        self._check_references = check_references
        self._clock = clock or (lambda: datetime.now(UTC))
        self._prepare = {SCENE.key: self._prepare_scene, EXPERIMENT.key: self._prepare_experiment}
        self._served = ServedScenes(unit_of_work, refresh_seconds)

    # --- standard methods -----------------------------------------------------------------

    def create(
        self, kind: Kind, resource_id: str, resource: Resource, validate_only: bool = False
    ) -> Resource:
        validation.check_id(resource_id, f"{kind.key}_id")
        with self._unit_of_work() as repo:
            spec = _copy(resource)
            _clear_output_only(spec)
            self._prepare[kind.key](repo, resource_id, spec, False)
            now = self._clock()
            record = _stamp(kind, StoredResource(kind.key, resource_id, spec, "", now, now))
            if validate_only:
                return record.spec
            if not repo.insert(record):
                raise AlreadyExists(f"{kind.name(resource_id)} already exists")
        self._served.changed()
        return record.spec

    def get(self, kind: Kind, name: str) -> Resource:
        resource_id = kind.parse_name(name)
        with self._unit_of_work() as repo:
            return _require(repo, kind, resource_id).spec

    def list(self, kind: Kind, requested_size: int, page_token: str, filter_text: str = "") -> Page:
        size = page_size(requested_size)
        if filter_text:
            raise InvalidArgument("filter", "filtering is not supported by this server version")
        with self._unit_of_work() as repo:
            records, token = list_page(
                lambda after, limit: repo.list(kind.key, after or "", limit),
                lambda record: record.resource_id,
                scope=kind.key,
                size=size,
                token=page_token,
                tokens=self._tokens,
            )
        return Page([record.spec for record in records], token)

    def update(self, kind: Kind, resource: Resource, mask_paths: list[str]) -> Resource:
        name = getattr(resource, "name", "")
        if not name:
            raise InvalidArgument(f"{kind.key}.name", "is required")
        resource_id = kind.parse_name(name, f"{kind.key}.name")
        mask = _update_mask(kind, mask_paths)
        with self._unit_of_work() as repo:
            current = _require(repo, kind, resource_id)
            check_etag(current.etag, resource.etag, kind.key, required=True)
            spec = _copy(current.spec)
            mask.MergeMessage(
                resource, spec, replace_message_field=True, replace_repeated_field=True
            )
            self._prepare[kind.key](repo, resource_id, spec, True)
            record = _stamp(kind, replace(current, spec=spec, update_time=self._clock()))
            if not repo.replace(record, current.etag):
                raise Aborted(f"{name} changed concurrently; read it again and retry")
        self._served.changed()
        return record.spec

    def delete(self, kind: Kind, name: str, etag: str) -> None:
        resource_id = kind.parse_name(name)
        with self._unit_of_work() as repo:
            current = _require(repo, kind, resource_id)
            check_etag(current.etag, etag, kind.key)
            if kind is SCENE:
                _check_no_experiments(repo, resource_id)
            if not repo.delete(kind.key, resource_id, current.etag):
                raise Aborted(f"{name} changed concurrently; read it again and retry")
        self._served.changed()

    # --- reads for serving ----------------------------------------------------------------

    def snapshot(self, scene_id: str) -> ServingSnapshot:
        """A scene and its experiments, as stored; NOT_FOUND for an unknown scene. Served from
        memory: a write here is seen at once, one by another replica within the refresh."""
        return self._served.snapshot(scene_id)

    def scenes(self) -> Iterator[tuple[str, scene_pb2.Scene]]:
        """Every stored scene, a page per transaction."""
        after = ""
        while True:
            with self._unit_of_work() as repo:
                records = repo.list(SCENE.key, after, MAX_PAGE_SIZE)
            for record in records:
                yield record.resource_id, record.spec
            if len(records) < MAX_PAGE_SIZE:
                return
            after = records[-1].resource_id

    # --- validation per kind --------------------------------------------------------------

    def _prepare_scene(
        self, repo: ResourceRepository, scene_id: str, scene: Resource, updating: bool
    ) -> None:
        assert isinstance(scene, scene_pb2.Scene)
        validation.apply_scene_defaults(scene)
        validation.validate_scene(scene, self._stages)
        if self._check_references is not None:
            self._check_references(scene)
        if updating:
            for record in repo.experiments_of(scene_id):
                experiment = record.spec
                assert isinstance(experiment, experiment_pb2.Experiment)
                self._check_variants(scene, experiment, f"experiments/{record.resource_id}")

    def _prepare_experiment(
        self, repo: ResourceRepository, experiment_id: str, experiment: Resource, _updating: bool
    ) -> None:
        assert isinstance(experiment, experiment_pb2.Experiment)
        validation.apply_experiment_defaults(experiment, experiment_id)
        validation.validate_experiment(experiment)
        scene = repo.get(SCENE.key, experiment.scene)
        if scene is None:
            raise NotFound(f"experiment.scene: {SCENE.name(experiment.scene)} does not exist")
        assert isinstance(scene.spec, scene_pb2.Scene)
        self._check_variants(scene.spec, experiment, "experiment")

    def _check_variants(
        self, scene: scene_pb2.Scene, experiment: experiment_pb2.Experiment, path: str
    ) -> None:
        """Every variant's overrides must turn the scene into a valid scene."""
        for index, variant in enumerate(experiment.variants):
            field = f"{path}.variants[{index}].overrides"
            try:
                effective = apply_overrides(scene, variant_overrides(variant))
                validation.validate_scene(effective, self._stages)
                if self._check_references is not None:
                    self._check_references(effective)
            except (OverrideError, InvalidArgument, FailedPrecondition) as exc:
                message = f"gives an invalid scene: {exc}"
                if path == "experiment":
                    raise InvalidArgument(field, message) from None
                # A scene update would break a stored experiment: the fix is elsewhere.
                raise FailedPrecondition(
                    f"{field} {message}; update or delete that experiment first",
                    reason="BREAKS_EXPERIMENT",
                ) from None


def _copy(message: Resource) -> Resource:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _clear_output_only(spec: Resource) -> None:
    for field in OUTPUT_ONLY_FIELDS:
        spec.ClearField(field)


def _stamp(kind: Kind, record: StoredResource) -> StoredResource:
    """Fill the output-only fields of the stored spec, with a new etag."""
    spec = record.spec
    spec.name = kind.name(record.resource_id)
    spec.create_time.FromDatetime(record.create_time)
    spec.update_time.FromDatetime(record.update_time)
    spec.etag = uuid.uuid4().hex
    return replace(record, spec=spec, etag=spec.etag)


def _require(repo: ResourceRepository, kind: Kind, resource_id: str) -> StoredResource:
    record = repo.get(kind.key, resource_id)
    if record is None:
        raise NotFound(f"{kind.name(resource_id)} does not exist")
    return record


def _check_no_experiments(repo: ResourceRepository, scene_id: str) -> None:
    experiments = [EXPERIMENT.name(r.resource_id) for r in repo.experiments_of(scene_id)]
    if experiments:
        raise FailedPrecondition(
            f"{SCENE.name(scene_id)} is used by {', '.join(experiments[:10])}; delete those first",
            reason="HAS_DEPENDANTS",
        )


def _update_mask(kind: Kind, paths: list[str]) -> field_mask_pb2.FieldMask:
    """The mask to apply; empty means every field a client may set (a full replace)."""
    descriptor = kind.message.DESCRIPTOR
    writable = sorted(f.name for f in descriptor.fields if f.name not in OUTPUT_ONLY_FIELDS)
    mask = field_mask_pb2.FieldMask(paths=list(paths) or writable)
    if not mask.IsValidForDescriptor(descriptor):
        raise InvalidArgument(
            "update_mask", f"{list(paths)} names a field {kind.key} does not have; use {writable}"
        )
    output_only = sorted({p.split(".")[0] for p in mask.paths} & OUTPUT_ONLY_FIELDS)
    if output_only:
        raise InvalidArgument("update_mask", f"{output_only} are output only")
    return mask


class ServedScenes:
    """The scenes and experiments requests read, cached and kept fresh through the change log.

    At most every `refresh_seconds` one query asks the log what changed since the revision
    last seen; the scenes named (and, for an experiment, every scene, since an update may
    move it) are dropped and read again on their next request. The check re-reads a few
    revisions before the last seen, because revisions are assigned when a write starts and a
    slower transaction may commit a lower one later; a full drop every `FULL_SECONDS` bounds
    anything missed even so.
    """

    OVERLAP = 64
    FULL_SECONDS = 60.0

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._snapshots: dict[str, ServingSnapshot] = {}
        self._revision = 0
        # Revisions of the overlap already acted on, so a change is applied once.
        self._applied: set[int] = set()
        self._next_check = 0.0
        self._next_full = 0.0
        self._lock = threading.Lock()

    def snapshot(self, scene_id: str) -> ServingSnapshot:
        self._refresh()
        found = self._snapshots.get(scene_id)
        if found is None:
            found = self._load(scene_id)
            with self._lock:
                self._snapshots[scene_id] = found
        return found

    def changed(self) -> None:
        """This process wrote: drop everything now (writes are rare, reads are not)."""
        with self._lock:
            self._snapshots.clear()
            self._next_check = 0.0

    def _load(self, scene_id: str) -> ServingSnapshot:
        with self._unit_of_work() as repo:
            record = repo.get(SCENE.key, scene_id)
            if record is None:
                # Not cached: a scene created a moment later must serve at once.
                raise NotFound(f"{SCENE.name(scene_id)} does not exist", reason="SCENE_NOT_FOUND")
            experiments = [r.spec for r in repo.experiments_of(scene_id)]
        assert isinstance(record.spec, scene_pb2.Scene)
        return ServingSnapshot(record.spec, experiments)

    def _refresh(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self._refresh_seconds
            if now >= self._next_full:
                self._next_full = now + self.FULL_SECONDS
                self._snapshots.clear()
        try:
            with self._unit_of_work() as repo:
                found = repo.changes_since(max(0, self._revision - self.OVERLAP), MAX_PAGE_SIZE)
                head = repo.head_revision()
        except Exception:  # the database is down: cached scenes keep serving; retried later
            log.warning("scene_cache_refresh_failed", exc_info=True)
            return
        with self._lock:
            fresh = [change for change in found if change.revision not in self._applied]
            if len(found) >= MAX_PAGE_SIZE or any(c.kind == EXPERIMENT.key for c in fresh):
                self._snapshots.clear()
            for change in fresh:
                self._snapshots.pop(change.resource_id, None)
            self._revision = max(self._revision, head)
            self._applied = {c.revision for c in found if c.revision > head - self.OVERLAP}
