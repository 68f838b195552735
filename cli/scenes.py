"""Scenes and experiments in `recstack apply`/`plan`, through the recommend service's API.

They live in the recommend service, not the registry, so they are applied after the registry's
definitions (a scene may name a model or a view created by the same apply), scenes before
experiments, each created or updated by its standard method. The service validates each one
fully, its references to the registry included, even for `plan` (a validate-only create):
a scene naming a missing view, feature, model or stage type fails here, not at its first
request. Scene and experiment ids are global to the service; a repository's scenes are those
whose `project` is the repository's, which is also what `--prune` deletes from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic_settings import BaseSettings, SettingsConfigDict
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as rpb

from cli.connection import Connection, Context, Service
from cli.definitions import FeatureRepo, Served
from cli.errors import CliError, DefinitionError, RpcFailed

Action = rpb.PlanStep.Action
OUTPUT_ONLY = ("name", "create_time", "update_time", "etag")
# The reason the recommend service gives for a scene naming what the registry lacks.
REFERENCE_MISSING = "SCENE_REFERENCE_MISSING"
PAGE = 1000

RECOMMEND = Service(
    "recommend service",
    "--recommend",
    "RECSTACK_RECOMMEND_ADDR",
    recommend_service_pb2_grpc.RecommendServiceStub,
)


class RecommendAddress(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="ignore")

    recommend_addr: str = "127.0.0.1:50054"


def connect(context: Context, address: str | None) -> Connection:
    return Connection(
        context.settings, address or RecommendAddress().recommend_addr, RECOMMEND, tls=context.tls
    )


def apply(
    repo: FeatureRepo,
    connection: Connection,
    *,
    validate_only: bool,
    prune: bool,
    registry_changes: bool = False,
) -> list[rpb.PlanStep]:
    """The steps for the repository's scenes and experiments. `registry_changes`: the
    registry part of a plan creates or changes resources, which a scene may name; their
    reference checks then wait for `apply`."""
    declared = {(item.origin.kind.lower(), item.resource_id) for item in repo.served}
    deferred = validate_only and registry_changes
    steps: list[rpb.PlanStep] = []
    # Scenes this plan creates: their experiments can be checked only once they exist.
    new_scenes: set[str] = set()
    for item in repo.served:
        waits = validate_only and getattr(item.spec, "scene", None) in new_scenes
        step = _upsert(repo, connection, item, validate_only, deferred, checked=not waits)
        if item.origin.kind == "Scene" and step.action == Action.ACTION_CREATE:
            new_scenes.add(item.resource_id)
        steps.append(step)
    if prune:
        steps += _prune(repo, connection, declared, validate_only)
    return steps


# --- one resource ----------------------------------------------------------------------------


class _Kind:
    def __init__(self, key: str, collection: str, field: str) -> None:
        self.key, self.collection, self.field = key, collection, field
        self.title = key.capitalize()

    def rpc(self, verb: str) -> str:
        return f"{verb}{self.title}"


SCENE, EXPERIMENT = (
    _Kind("scene", "scenes", "scene"),
    _Kind("experiment", "experiments", "experiment"),
)
KINDS = {"Scene": SCENE, "Experiment": EXPERIMENT}


def _upsert(
    repo: FeatureRepo,
    connection: Connection,
    item: Served,
    validate_only: bool,
    deferred: bool,
    *,
    checked: bool = True,
) -> rpb.PlanStep:
    """`_upsert_one`, with a refusal prefixed by where the definition was written."""
    try:
        return _upsert_one(repo, connection, item, validate_only, deferred, checked=checked)
    except RpcFailed as exc:
        raise BlamedRpc(f"{item.origin}: {exc}", exc.code) from None


class BlamedRpc(RpcFailed):
    """A refused call, its message naming the definition's file and document."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        CliError.__init__(self, message)
        self.code = code


def _upsert_one(
    repo: FeatureRepo,
    connection: Connection,
    item: Served,
    validate_only: bool,
    deferred: bool,
    *,
    checked: bool = True,
) -> rpb.PlanStep:
    kind = KINDS[item.origin.kind]
    spec = _with_project(repo, item)
    name = f"{kind.collection}/{item.resource_id}"
    locate = _locator(item)
    current = _get(connection, kind, name)
    request_type = getattr(pb, f"Create{kind.title}Request")
    notes = [] if checked else ["(checked at apply: its scene is new)"]
    # Validate-only first, always: `plan` checks as much as `apply` does.
    # What the service would store, its defaults filled in, is what `current` is compared to.
    stored = spec
    try:
        if checked:
            stored = getattr(
                connection.call(
                    kind.rpc("Create"),
                    request_type(
                        **{
                            f"{kind.key}_id": item.resource_id,
                            kind.field: spec,
                            "validate_only": True,
                        }
                    ),
                    locate=locate,
                ),
                kind.field,
            )
    except RpcFailed as exc:
        if not (deferred and REFERENCE_MISSING in str(exc)):
            raise
        notes.append("(registry references checked at apply)")
    if current is None:
        if not validate_only:
            connection.call(
                kind.rpc("Create"),
                request_type(**{f"{kind.key}_id": item.resource_id, kind.field: spec}),
                locate=locate,
            )
        return rpb.PlanStep(name=name, action=Action.ACTION_CREATE, changed_fields=notes)
    changed = _changed(current, stored)
    if not changed:
        return rpb.PlanStep(name=name, action=Action.ACTION_UNCHANGED, changed_fields=notes)
    if not validate_only:
        update = type(spec)()
        update.CopyFrom(spec)
        update.name, update.etag = name, current.etag
        connection.call(
            kind.rpc("Update"),
            getattr(pb, f"Update{kind.title}Request")(**{kind.field: update}),
            locate=locate,
        )
    return rpb.PlanStep(name=name, action=Action.ACTION_UPDATE, changed_fields=changed + notes)


def _with_project(repo: FeatureRepo, item: Served) -> Message:
    spec = type(item.spec)()
    spec.CopyFrom(item.spec)
    if item.origin.kind == "Scene":
        if spec.project and spec.project != repo.project:
            raise DefinitionError(
                f"{item.origin}: project",
                f"is {spec.project!r}; a repository's scenes are in its project {repo.project!r}",
            )
        spec.project = repo.project
    return spec


def _get(connection: Connection, kind: _Kind, name: str) -> Any:
    try:
        response = connection.call(
            kind.rpc("Get"), getattr(pb, f"Get{kind.title}Request")(name=name)
        )
    except RpcFailed as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return getattr(response, kind.field)


def _changed(current: Message, desired: Message) -> list[str]:
    """Top-level fields whose values differ; defaults the service fills count as equal."""

    def fields(message: Message) -> dict[str, Any]:
        found = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return {key: value for key, value in found.items() if key not in OUTPUT_ONLY}

    before, after = fields(current), fields(desired)
    return sorted(
        key
        for key in after.keys() | before.keys()
        if key in after and before.get(key) != after[key]
    )


def _locator(item: Served) -> Callable[[str], str | None]:
    return lambda _field: str(item.origin)


# --- prune -----------------------------------------------------------------------------------


def _prune(
    repo: FeatureRepo,
    connection: Connection,
    declared: set[tuple[str, str]],
    validate_only: bool,
) -> list[rpb.PlanStep]:
    scenes = [s for s in _list_all(connection, SCENE) if s.project == repo.project]
    scene_ids = {s.name.rsplit("/", 1)[-1] for s in scenes}
    experiments = [e for e in _list_all(connection, EXPERIMENT) if e.scene in scene_ids]
    doomed = [
        (EXPERIMENT, e)
        for e in experiments
        if ("experiment", e.name.rsplit("/", 1)[-1]) not in declared
    ] + [(SCENE, s) for s in scenes if ("scene", s.name.rsplit("/", 1)[-1]) not in declared]
    steps = []
    for kind, resource in doomed:  # experiments first: a scene with experiments cannot go
        if not validate_only:
            connection.call(
                kind.rpc("Delete"),
                getattr(pb, f"Delete{kind.title}Request")(name=resource.name, etag=resource.etag),
            )
        steps.append(rpb.PlanStep(name=resource.name, action=Action.ACTION_DELETE))
    return steps


def _list_all(connection: Connection, kind: _Kind) -> Sequence[Any]:
    found, token = [], ""
    while True:
        response = connection.call(
            f"List{kind.title}s",
            getattr(pb, f"List{kind.title}sRequest")(page_size=PAGE, page_token=token),
        )
        found += list(getattr(response, f"{kind.field}s"))
        token = response.next_page_token
        if not token:
            return found
