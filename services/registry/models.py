"""Model versions: registration, deployment to Triton, activation and rollback.

Knows nothing of gRPC. Every write to a model's versions first locks the model's row, so the
writers of one model run one after the other and exactly one version is ever ACTIVE. Model
server calls never run inside a transaction: a version is loaded and checked first, then its
state is written in a short transaction that re-reads what it depends on (and answers
ABORTED if that changed meanwhile).

Lifecycle: REGISTERED (created by training) → DEPLOYED (loaded, signature checked) → ACTIVE
(serves the model's traffic). Activating another version moves the previous one back to
DEPLOYED, still loaded: clients that resolved it a moment ago, and a rollback, keep working.
A DEPLOYED version that is neither active nor the rollback target is RETIRED (unloaded)
once it has been idle for the retire grace, by the next activation or rollback of its model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf import json_format
from google.protobuf.message import Message
from recstack.common.v1 import feature_ref_pb2
from recstack.registry.v1 import model_pb2

from services.registry import validation
from services.registry.adapters.deployer import DeployedModel, ModelDeployer, ModelLoadFailed
from services.registry.adapters.repository import ResourceRepository, StoredResource
from services.registry.fg_check import FgConfigCheck, FgInputs, PinnedFeature, check_fg_config
from services.registry.kinds import (
    ENTITY,
    FEATURE_VIEW,
    MODEL,
    MODEL_FEATURE_SET,
    MODEL_VERSION,
    PROJECT,
    parse_version_name,
)
from services.registry.preparation import ref, require_ref
from services.registry.registry import UnitOfWork, check_etag
from shared.errors import (
    Aborted,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shared.standard_methods import (
    MAX_PAGE_SIZE,
    Condition,
    Page,
    PageTokens,
    list_page,
    page_size,
    parse_filter,
)

ModelVersion = model_pb2.ModelVersion
State = ModelVersion.State
log = structlog.get_logger(__name__)

# Each version is its own Triton model (see model.proto), so its Triton version is fixed.
TRITON_MODEL_VERSION = "1"
MAX_ROLLBACK_VERSIONS = 20
MUTABLE_VERSION_FIELDS = ("description", "metrics")
VERSION_OUTPUT_ONLY = frozenset(
    {
        "name",
        "version",
        "resolved_features",
        "triton_model_name",
        "triton_model_version",
        "state",
        "state_message",
        "state_time",
        "create_time",
        "update_time",
        "etag",
    }
)
# A version can be switched to only while it is loaded.
LOADED = (State.STATE_DEPLOYED, State.STATE_ACTIVE)


def triton_model_name(project: str, model_id: str, version: int) -> str:
    return f"{project}__{model_id}__v{version}"


@dataclass(frozen=True)
class DeploymentSettings:
    # How long a loaded model may take to report ready.
    ready_timeout_s: float = 30.0
    # How long a DEPLOYED version that is neither active nor the rollback target stays loaded
    # before an activation or rollback retires it. Must exceed how stale readers may be (the
    # RegistryClient refresh period, 5 s by default) plus the longest request.
    retire_grace_s: float = 60.0
    poll_interval_s: float = 0.05


@dataclass(frozen=True)
class Failure:
    """Why a version cannot serve: an ErrorInfo reason and the version's state message."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Activation:
    model: model_pb2.Model
    version: ModelVersion


class ModelRegistry:
    def __init__(
        self,
        unit_of_work: UnitOfWork,
        deployer: ModelDeployer,
        *,
        fg_check: FgConfigCheck = check_fg_config,
        settings: DeploymentSettings | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._tokens = page_tokens or PageTokens()
        self._deployer = deployer
        self._fg_check = fg_check
        self._settings = settings or DeploymentSettings()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep

    # --- standard methods -------------------------------------------------------------

    def create(self, parent: str, spec: ModelVersion, validate_only: bool) -> ModelVersion:
        project, model_id = MODEL.parse_name(parent, "parent")
        validation.validate_model_version(spec)
        set_id = _feature_set_id(spec.model_feature_set, project)
        if not spec.HasField("fg_config"):
            raise InvalidArgument(
                "model_version.fg_config", 'is required: the FG document {"features": [...]}'
            )
        with self._unit_of_work() as repo:
            model = _lock_model(repo, project, model_id)
            feature_set = require_ref(
                repo, MODEL_FEATURE_SET, project, set_id, "model_version.model_feature_set"
            )
            refs = list(feature_set.spec.resolved_features)
            inputs = _fg_inputs(repo, project, refs, feature_set.spec, feature_set.spec.name)
            try:
                self._fg_check(_document(spec), inputs)
            except InvalidArgument as error:
                raise InvalidArgument(
                    f"model_version.fg_config.{error.field}", error.description, reason=error.reason
                ) from error
            now = self._clock()
            version = _new_version(spec, project, model_id, model.spec.last_version + 1, refs, now)
            if validate_only:
                return version
            if not repo.insert(_version_record(version, project, model_id, set_id, now)):
                raise Aborted(f"{version.name} was created concurrently; retry")
            updated = _copy(model.spec)
            updated.last_version = version.version
            _write(repo, model, updated, now)
        return version

    def get(self, name: str) -> ModelVersion:
        project, model_id, number = parse_version_name(name)
        with self._unit_of_work() as repo:
            return _require_version(repo, project, model_id, number).spec

    def list(self, parent: str, requested_size: int, page_token: str, filter_text: str) -> Page:
        project, model_id = MODEL.parse_name(parent, "parent")
        size = page_size(requested_size)
        conditions = parse_filter(filter_text, ModelVersion.DESCRIPTOR)
        with self._unit_of_work() as repo:
            _require_model(repo, project, model_id)
            records, token = list_page(
                lambda before, limit: repo.list_versions_before(
                    MODEL_VERSION.key,
                    project,
                    model_id,
                    None if before is None else int(before),
                    limit,
                    conditions,
                ),
                lambda record: str(record.version),
                scope=f"{MODEL_VERSION.key}:{project}/{model_id}:{filter_text}",
                size=size,
                token=page_token,
                tokens=self._tokens,
            )
        return Page([record.spec for record in records], token)

    def update(self, spec: ModelVersion, mask_paths: Sequence[str]) -> ModelVersion:
        if not spec.name:
            raise InvalidArgument("model_version.name", "is required")
        project, model_id, number = parse_version_name(spec.name, "model_version.name")
        paths = _version_update_paths(mask_paths)
        if "metrics" in paths:
            validation.validate_metrics(spec.metrics, "model_version.metrics")
        with self._unit_of_work() as repo:
            _lock_model(repo, project, model_id)
            current = _require_version(repo, project, model_id, number)
            check_etag(current, spec.etag, "model_version")
            desired = _copy(current.spec)
            for path in paths:
                desired.ClearField(path)
                if path == "metrics":
                    desired.metrics.update(spec.metrics)
                else:
                    setattr(desired, path, getattr(spec, path))
            if desired == current.spec:
                return current.spec
            return _write(repo, current, desired, self._clock())

    def delete(self, name: str, etag: str) -> None:
        """Delete a version that is not active, unloading it from the model server first."""
        project, model_id, number = parse_version_name(name)
        version = self._retire_for_delete(project, model_id, number, etag)
        if version.state == State.STATE_DEPLOYED:
            try:
                self._unload(version, strict=True)
            except Unavailable as error:
                raise Unavailable(
                    f"{name} is now RETIRED but was not deleted: {error.message}; delete it "
                    "again once the model server answers",
                    reason=error.reason,
                ) from error
        elif version.state == State.STATE_FAILED:
            self._unload(version, strict=False)
        self._remove(project, model_id, number)

    def _retire_for_delete(
        self, project: str, model_id: str, number: int, etag: str
    ) -> ModelVersion:
        """The version as it was; a DEPLOYED one is RETIRED first, so that no activation can
        pick it up while it is being unloaded."""
        with self._unit_of_work() as repo:
            _lock_model(repo, project, model_id)
            current = _require_version(repo, project, model_id, number)
            check_etag(current, etag, "model_version")
            _refuse_active(current.spec, "delete")
            if current.spec.state == State.STATE_DEPLOYED:
                now = self._clock()
                _write(repo, current, _entered(current.spec, State.STATE_RETIRED, now), now)
        return current.spec

    def _remove(self, project: str, model_id: str, number: int) -> None:
        name = MODEL_VERSION.name(project, model_id, number)
        with self._unit_of_work() as repo:
            model = _lock_model(repo, project, model_id)
            current = _require_version(repo, project, model_id, number)
            _refuse_active(current.spec, "delete")
            if current.spec.state == State.STATE_DEPLOYED:
                raise Aborted(f"{name} was deployed again meanwhile; delete it again")
            repo.delete(MODEL_VERSION.key, project, model_id, number)
            if number in model.spec.rollback_versions:
                updated = _copy(model.spec)
                updated.rollback_versions[:] = [v for v in updated.rollback_versions if v != number]
                _write(repo, model, updated, self._clock())

    # --- custom methods ---------------------------------------------------------------

    def deploy(self, name: str) -> ModelVersion:
        project, model_id, number = parse_version_name(name)
        with self._unit_of_work() as repo:
            version = _require_version(repo, project, model_id, number).spec
        return self._deploy(version)

    def activate(self, name: str, etag: str) -> Activation:
        project, model_id, number = parse_version_name(name)
        with self._unit_of_work() as repo:
            check_etag(_require_model(repo, project, model_id), etag, "model")
            version = _require_version(repo, project, model_id, number).spec
            self._check_activatable(repo, project, version)
        self._deploy(version)
        activation = self._switch(project, model_id, number, etag, rollback=False)
        self._retire_idle(project, model_id)
        return activation

    def rollback(self, name: str, etag: str) -> Activation:
        project, model_id = MODEL.parse_name(name)
        with self._unit_of_work() as repo:
            model = _require_model(repo, project, model_id)
            check_etag(model, etag, "model")
            if not model.spec.rollback_versions:
                raise FailedPrecondition(
                    f"{model.spec.name} has no previous version to roll back to: no version "
                    "was active before the current one (activate a version instead)",
                    reason="NO_PREVIOUS_VERSION",
                )
            target = model.spec.rollback_versions[0]
            version = _require_version(repo, project, model_id, target).spec
            self._check_activatable(repo, project, version)
        self._deploy(version)
        activation = self._switch(project, model_id, target, etag, rollback=True)
        self._retire_idle(project, model_id)
        return activation

    # --- deployment -------------------------------------------------------------------

    def _check_activatable(
        self, repo: ResourceRepository, project: str, version: ModelVersion
    ) -> None:
        """The FG config must still match the features the version was trained on."""
        _, set_id = MODEL_FEATURE_SET.parse_name(version.model_feature_set)
        feature_set = require_ref(
            repo, MODEL_FEATURE_SET, project, set_id, f"{version.name}: model_feature_set"
        )
        inputs = _fg_inputs(
            repo, project, version.resolved_features, feature_set.spec, version.name
        )
        try:
            self._fg_check(_document(version), inputs)
        except InvalidArgument as error:
            raise FailedPrecondition(
                f"{version.name} cannot be activated: fg_config.{error.field}: {error.description}",
                reason="FG_CONFIG_MISMATCH",
            ) from error

    def _deploy(self, version: ModelVersion) -> ModelVersion:
        """Load and verify the version; record DEPLOYED, or FAILED and raise why."""
        failure = self._load_and_verify(version)
        project, model_id, number = parse_version_name(version.name)
        now = self._clock()
        with self._unit_of_work() as repo:
            _lock_model(repo, project, model_id)
            current = _require_version(repo, project, model_id, number)
            state = current.spec.state
            if failure is None and state not in LOADED:
                deployed = _entered(current.spec, State.STATE_DEPLOYED, now)
                return _write(repo, current, deployed, now)
            if failure is not None and state != State.STATE_ACTIVE:
                failed = _entered(current.spec, State.STATE_FAILED, now)
                failed.state_message = failure.detail
                _write(repo, current, failed, now)
        if failure is None:
            return current.spec
        if state != State.STATE_ACTIVE:
            # A version whose tensors do not match must not stay loaded under its name.
            self._unload(version, strict=False)
        raise FailedPrecondition(f"{version.name}: {failure.detail}", reason=failure.reason)

    def _load_and_verify(self, version: ModelVersion) -> Failure | None:
        """Why the loaded version cannot serve, or None. Unavailable propagates unchanged."""
        model = version.triton_model_name
        try:
            if not self._deployer.is_ready(model, TRITON_MODEL_VERSION):
                self._deployer.load(model)
                self._wait_ready(model)
            deployed = self._deployer.deployed(model)
        except ModelLoadFailed as error:
            return Failure(
                error.reason,
                f"{error.detail} (training writes the version to <model repository>/{model}/: "
                "config.pbtxt, 1/model.onnx, 1/model.py)",
            )
        problems = signature_problems(version.signature, deployed)
        if problems:
            return Failure(
                "SIGNATURE_MISMATCH",
                f"Triton's configuration of '{model}' does not match the version's signature: "
                + "; ".join(problems),
            )
        return None

    def _wait_ready(self, model: str) -> None:
        deadline = time.monotonic() + self._settings.ready_timeout_s
        while not self._deployer.is_ready(model, TRITON_MODEL_VERSION):
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"model '{model}' loaded but was not ready after "
                    f"{self._settings.ready_timeout_s:g}s; see the Triton log, then deploy again",
                    reason="MODEL_NOT_READY",
                )
            self._sleep(self._settings.poll_interval_s)

    def _unload(self, version: ModelVersion, *, strict: bool) -> None:
        try:
            self._deployer.unload(version.triton_model_name)
        except DomainError as error:
            if strict:
                raise
            log.warning("model_unload_failed", model=version.triton_model_name, error=str(error))

    # --- activation -------------------------------------------------------------------

    def _switch(
        self, project: str, model_id: str, target: int, etag: str, *, rollback: bool
    ) -> Activation:
        """Make `target` the active version in one transaction under the model's lock."""
        now = self._clock()
        with self._unit_of_work() as repo:
            model = _lock_model(repo, project, model_id)
            check_etag(model, etag, "model")
            history = list(model.spec.rollback_versions)
            if rollback and history[:1] != [target]:
                raise Aborted(f"{model.spec.name} was activated or rolled back meanwhile; retry")
            version = _require_version(repo, project, model_id, target)
            previous = model.spec.active_version
            if previous == target:
                return Activation(model.spec, version.spec)
            if version.spec.state not in LOADED:
                raise Aborted(
                    f"{version.spec.name} became {State.Name(version.spec.state)} meanwhile; retry"
                )
            if previous:
                demoted = _require_version(repo, project, model_id, previous)
                _write(repo, demoted, _entered(demoted.spec, State.STATE_DEPLOYED, now), now)
            if rollback:
                history = history[1:]
            elif previous:
                history = [previous, *history]
            updated = _copy(model.spec)
            updated.active_version = target
            updated.rollback_versions[:] = [v for v in history if v != target][
                :MAX_ROLLBACK_VERSIONS
            ]
            active = _write(repo, version, _entered(version.spec, State.STATE_ACTIVE, now), now)
            return Activation(_write(repo, model, updated, now), active)

    def _retire_idle(self, project: str, model_id: str) -> None:
        """Retire (then unload) DEPLOYED versions neither active nor the rollback target that
        have been idle for the grace. Best effort: the activation has already succeeded."""
        now = self._clock()
        retired: list[ModelVersion] = []
        with self._unit_of_work() as repo:
            model = _lock_model(repo, project, model_id)
            kept = {model.spec.active_version, *model.spec.rollback_versions[:1]}
            deployed = repo.list_versions_before(
                MODEL_VERSION.key,
                project,
                model_id,
                None,
                MAX_PAGE_SIZE,
                [Condition(("state",), "=", State.Name(State.STATE_DEPLOYED))],
            )
            for record in deployed:
                idle = now - record.spec.state_time.ToDatetime(tzinfo=UTC)
                if record.version in kept or idle.total_seconds() < self._settings.retire_grace_s:
                    continue
                idled = _entered(record.spec, State.STATE_RETIRED, now)
                retired.append(_write(repo, record, idled, now))
        for version in retired:
            self._unload(version, strict=False)


def signature_problems(signature: model_pb2.ModelSignature, deployed: DeployedModel) -> list[str]:
    """How the loaded model's tensors differ from the signature (empty when they match)."""
    problems = []
    if deployed.max_batch_size <= 0:
        problems.append("max_batch_size is 0, but versions must batch (max_batch_size > 0)")
    for side, declared, loaded in (
        ("input", signature.inputs, deployed.inputs),
        ("output", signature.outputs, deployed.outputs),
    ):
        want = {t.name: (t.data_type, list(t.dims)) for t in declared}
        got = {t.name: (t.data_type, list(t.dims)) for t in loaded}
        problems += [f"{side} '{n}' is missing from Triton's config" for n in want.keys() - got]
        problems += [f"{side} '{n}' is not in the signature" for n in got.keys() - want]
        problems += [
            f"{side} '{n}' is {want[n][0]} {want[n][1]} in the signature but "
            f"{got[n][0]} {got[n][1]} in Triton"
            for n in want.keys() & got.keys()
            if want[n] != got[n]
        ]
    return sorted(problems)


def _feature_set_id(name: str, project: str) -> str:
    field = "model_version.model_feature_set"
    if not name:
        raise InvalidArgument(field, "is required: projects/{project}/modelFeatureSets/{set}")
    set_project, set_id = MODEL_FEATURE_SET.parse_name(name, field)
    if set_project != project:
        raise InvalidArgument(field, f"must be in the model's project {project!r}")
    return set_id


def _fg_inputs(
    repo: ResourceRepository,
    project: str,
    refs: Iterable[feature_ref_pb2.FeatureRef],
    feature_set: Message,
    owner: str,
) -> FgInputs:
    """The pinned features with their types, and the set's entity keys."""
    keys = []
    for entity_id in feature_set.entities:
        entity = require_ref(repo, ENTITY, project, entity_id, f"{owner}: entities").spec
        key_ref = feature_ref_pb2.FeatureRef(feature=entity.join_key)
        keys.append(PinnedFeature(key_ref, entity.key_type, entity_id))
    return FgInputs(tuple(_pinned_features(repo, project, refs, owner)), tuple(keys))


def _pinned_features(
    repo: ResourceRepository,
    project: str,
    refs: Iterable[feature_ref_pb2.FeatureRef],
    owner: str,
) -> list[PinnedFeature]:
    """The refs with their types; FAILED_PRECONDITION when a pinned view version is gone."""
    views: dict[tuple[str, int], Message] = {}
    pinned = []
    for feature_ref in refs:
        key = (feature_ref.feature_view, feature_ref.version)
        if key not in views:
            record = repo.get(FEATURE_VIEW.key, project, *key)
            if record is None:
                raise FailedPrecondition(
                    f"{owner} pins feature view {key[0]!r} version {key[1]}, which no longer "
                    "exists",
                    reason="PINNED_FEATURE_MISSING",
                )
            views[key] = record.spec
        view = views[key]
        types = {field.name: field.value_type for field in view.fields}
        if feature_ref.feature not in types:
            raise FailedPrecondition(
                f"{owner} pins {feature_ref.feature_view}:{feature_ref.feature}, which version "
                f"{feature_ref.version} of the view does not have",
                reason="PINNED_FEATURE_MISSING",
            )
        pinned.append(PinnedFeature(feature_ref, types[feature_ref.feature], view.entity))
    return pinned


def _document(version: ModelVersion) -> dict[str, Any]:
    return json_format.MessageToDict(version.fg_config)


def _new_version(
    spec: ModelVersion,
    project: str,
    model_id: str,
    number: int,
    refs: list[feature_ref_pb2.FeatureRef],
    now: datetime,
) -> ModelVersion:
    version = _copy(spec)
    for field in VERSION_OUTPUT_ONLY:
        version.ClearField(field)
    version.name = MODEL_VERSION.name(project, model_id, number)
    version.version = number
    version.resolved_features.extend(refs)
    version.triton_model_name = triton_model_name(project, model_id, number)
    version.triton_model_version = TRITON_MODEL_VERSION
    version.state = State.STATE_REGISTERED
    version.state_time.FromDatetime(now)
    version.create_time.FromDatetime(now)
    version.update_time.FromDatetime(now)
    version.etag = uuid.uuid4().hex
    return version


def _version_record(
    version: ModelVersion, project: str, model_id: str, set_id: str, now: datetime
) -> StoredResource:
    refs = (
        ref(PROJECT, project, project),
        ref(MODEL, project, model_id),
        ref(MODEL_FEATURE_SET, project, set_id),
    )
    return StoredResource(
        MODEL_VERSION.key, project, model_id, version.version, version, refs, version.etag, now, now
    )


def _entered(spec: ModelVersion, state: int, now: datetime) -> ModelVersion:
    """A copy of `spec` that entered `state` now (with no failure message)."""
    updated = _copy(spec)
    updated.state = state  # type: ignore[assignment]
    updated.state_message = ""
    updated.state_time.FromDatetime(now)
    return updated


def _write(repo: ResourceRepository, current: StoredResource, spec: Any, now: datetime) -> Any:
    """Store `spec` over `current` with a new etag; ABORTED if it changed since it was read."""
    spec.update_time.FromDatetime(now)
    spec.etag = uuid.uuid4().hex
    record = replace(current, spec=spec, etag=spec.etag, update_time=now)
    if not repo.replace(record, current.etag):
        raise Aborted(f"{spec.name} changed concurrently; read it again and retry")
    return spec


def _version_update_paths(mask_paths: Sequence[str]) -> list[str]:
    paths = list(mask_paths) or list(MUTABLE_VERSION_FIELDS)
    fields = ModelVersion.DESCRIPTOR.fields_by_name
    for path in paths:
        top = path.split(".")[0]
        if top not in fields:
            raise InvalidArgument("update_mask", f"model_version has no field {path!r}")
        if top in VERSION_OUTPUT_ONLY:
            raise InvalidArgument("update_mask", f"{path!r} is output only")
        if top in MUTABLE_VERSION_FIELDS and top != path:
            raise InvalidArgument("update_mask", f"update {top!r} as a whole, not {path!r}")
        if top not in MUTABLE_VERSION_FIELDS:
            raise InvalidArgument(
                "update_mask",
                f"{path!r} is immutable: it describes the trained artifact; train and create "
                f"a new version instead (updatable: {', '.join(MUTABLE_VERSION_FIELDS)})",
            )
    return paths


def _refuse_active(version: ModelVersion, action: str) -> None:
    if version.state == State.STATE_ACTIVE:
        raise FailedPrecondition(
            f"cannot {action} {version.name}: it is the model's active version; activate "
            "another version (or roll back) first",
            reason="VERSION_ACTIVE",
        )


def _require_model(repo: ResourceRepository, project: str, model_id: str) -> StoredResource:
    record = repo.get(MODEL.key, project, model_id)
    if record is None:
        raise NotFound(f"{MODEL.name(project, model_id)} does not exist")
    return record


def _lock_model(repo: ResourceRepository, project: str, model_id: str) -> StoredResource:
    record = repo.get_for_update(MODEL.key, project, model_id)
    if record is None:
        raise NotFound(f"{MODEL.name(project, model_id)} does not exist")
    return record


def _require_version(
    repo: ResourceRepository, project: str, model_id: str, number: int
) -> StoredResource:
    record = repo.get(MODEL_VERSION.key, project, model_id, number)
    if record is None:
        if repo.get(MODEL.key, project, model_id) is None:
            raise NotFound(f"{MODEL.name(project, model_id)} does not exist")
        raise NotFound(f"{MODEL_VERSION.name(project, model_id, number)} does not exist")
    return record


def _copy(message: Any) -> Any:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
