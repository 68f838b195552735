"""A feature repository on disk: YAML definitions under a directory, read into `Definition`s.

Every `*.yaml`/`*.yml` file under the directory may hold several documents, each one resource:
`kind:`, `id:` and the resource's fields in proto-JSON form with friendly spellings (see
`friendly`). `recstack.yaml` at the root holds repository settings (`project:`), not a resource.
Every error names the file, the document and the field.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from recstack.recommend.v1 import experiment_pb2, scene_pb2
from recstack.registry.v1 import registry_service_pb2 as pb

from cli import resources
from cli.errors import DefinitionError, UsageError, definition_index
from cli.friendly import FieldError, to_proto_json

CONFIG_NAMES = ("recstack.yaml", "recstack.yml")
CONFIG_KEYS = frozenset({"project"})
SUFFIXES = (".yaml", ".yml")
# The id rule of the registry contract (`<resource>_id` in registry_service.proto), checked
# here too so a bad id is reported at its file and document instead of as `definitions.id`.
ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
ID_RULE = "use 1-63 characters of a-z, 0-9 and _, starting with a letter"
# Set by the registry; declaring them would silently do nothing, so it is an error instead.
OUTPUT_ONLY = frozenset(
    {
        "name",
        "version",
        "create_time",
        "update_time",
        "etag",
        "resolved_features",
        # A model's activation state, maintained by deploy/activate/rollback.
        "active_version",
        "rollback_versions",
        "last_version",
    }
)
SERVED_OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag"})


@dataclass(frozen=True)
class Origin:
    """Where one definition was written."""

    path: Path
    document: int
    kind: str = ""
    resource_id: str = ""

    def __str__(self) -> str:
        what = f" ({self.kind} {self.resource_id})" if self.kind else ""
        return f"{self.path} document {self.document}{what}"


# Recommend resources a repository may declare beside the registry's: YAML `kind:` → message.
SERVING_KINDS: dict[str, type[Message]] = {
    "Scene": scene_pb2.Scene,
    "Experiment": experiment_pb2.Experiment,
}


@dataclass(frozen=True)
class Served:
    """A scene or experiment of the repository (the recommend service's resources)."""

    origin: Origin
    resource_id: str
    spec: Message


@dataclass(frozen=True)
class FeatureRepo:
    project: str
    definitions: list[pb.Definition]
    origins: list[Origin]
    # Scenes, then experiments, as declared.
    served: list[Served] = field(default_factory=list)

    def locate(self, field_path: str) -> str | None:
        """Where the definition an Apply error's `definitions[N]…` field points at was written."""
        index = definition_index(field_path)
        if index is None or index >= len(self.origins):
            return None
        return str(self.origins[index])


def load(directory: Path, project: str | None = None) -> FeatureRepo:
    """Read every definition under `directory` (or one YAML file); `project` overrides config."""
    if not directory.exists():
        raise UsageError(f"{directory} does not exist")
    root = directory if directory.is_dir() else directory.parent
    if project is not None and not ID_PATTERN.match(project):
        raise UsageError(f"--project {project!r} is not a valid project id: {ID_RULE}")
    project = project or _configured_project(root)
    if not project:
        raise UsageError(
            f"no project: pass --project or write `project: <id>` in {root / CONFIG_NAMES[0]}"
        )
    documents = [item for path in _definition_files(directory) for item in _read_file(path)]
    if not documents:
        raise DefinitionError(str(directory), "holds no definitions (*.yaml or *.yml documents)")
    read = [item for item in documents if not isinstance(item, Served)]
    served = [item for item in documents if isinstance(item, Served)]
    origins = [origin for origin, _ in read]
    _check_unique([*origins, *(item.origin for item in served)])
    served.sort(key=lambda item: list(SERVING_KINDS).index(item.origin.kind))
    return FeatureRepo(project, [definition for _, definition in read], origins, served)


def _configured_project(root: Path) -> str | None:
    for name in CONFIG_NAMES:
        path = root / name
        if path.is_file():
            config = _documents(path)
            settings = config[0] if len(config) == 1 else None
            if not isinstance(settings, dict) or not set(settings) <= CONFIG_KEYS:
                raise DefinitionError(str(path), "must be one mapping with the key `project`")
            project = settings.get("project")
            if project is not None and not (isinstance(project, str) and ID_PATTERN.match(project)):
                raise DefinitionError(
                    f"{path}: project", f"{project!r} is not a valid id: {ID_RULE}"
                )
            return project
    return None


def _definition_files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    # Hidden directories (.git, .venv) are never part of a repository's definitions.
    return sorted(
        path
        for path in directory.rglob("*")
        if path.suffix in SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        and not (path.parent == directory and path.name in CONFIG_NAMES)
    )


def _documents(path: Path) -> list[Any]:
    try:
        with path.open(encoding="utf-8") as stream:
            return list(yaml.safe_load_all(stream))
    except yaml.YAMLError as exc:
        raise DefinitionError(str(path), f"is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(str(path), f"cannot be read: {exc}") from None


def _read_file(path: Path) -> list[tuple[Origin, pb.Definition] | Served]:
    read: list[tuple[Origin, pb.Definition] | Served] = []
    for number, document in enumerate(_documents(path), start=1):
        if document is None:  # an empty document, e.g. after a trailing `---`
            continue
        origin = Origin(path, number)
        if isinstance(document, dict) and document.get("kind") in SERVING_KINDS:
            read.append(_served(document, origin))
        else:
            read.append(_definition(document, origin))
    return read


def _served(document: dict[str, Any], origin: Origin) -> Served:
    body = dict(document)
    kind = body.pop("kind")
    resource_id = body.pop("id", None)
    if not isinstance(resource_id, str) or not ID_PATTERN.match(resource_id):
        raise DefinitionError(str(origin), f"`id` is required: {ID_RULE}")
    origin = Origin(origin.path, origin.document, kind, resource_id)
    message = SERVING_KINDS[kind]
    output_only = sorted(SERVED_OUTPUT_ONLY & set(body))
    if output_only:
        raise DefinitionError(f"{origin}: {output_only[0]}", "is output only; the service sets it")
    try:
        spec = json_format.ParseDict(
            to_proto_json(body, message.DESCRIPTOR), message(), ignore_unknown_fields=False
        )
    except (FieldError, json_format.ParseError) as exc:
        raise DefinitionError(str(origin), str(exc)) from None
    return Served(origin, resource_id, spec)


def _definition(document: Any, origin: Origin) -> tuple[Origin, pb.Definition]:
    if not isinstance(document, dict):
        raise DefinitionError(str(origin), "a definition must be a mapping with `kind` and `id`")
    body = dict(document)
    rtype = _kind(body.pop("kind", None), origin)
    resource_id = body.pop("id", None)
    if not isinstance(resource_id, str) or not resource_id:
        raise DefinitionError(str(origin), "`id` is required and must be a string")
    origin = Origin(origin.path, origin.document, rtype.kind, resource_id)
    if not ID_PATTERN.match(resource_id):
        raise DefinitionError(f"{origin}: id", f"{resource_id!r} is not a valid id: {ID_RULE}")
    output_only = sorted(OUTPUT_ONLY & set(body))
    if output_only:
        raise DefinitionError(f"{origin}: {output_only[0]}", "is output only; the registry sets it")
    try:
        data = to_proto_json(body, rtype.message.DESCRIPTOR)
        if rtype is resources.DATA_SOURCE:
            _resolve_file_path(data, origin.path.parent)
        message = json_format.ParseDict(data, rtype.message(), ignore_unknown_fields=False)
    except FieldError as exc:
        raise DefinitionError(str(origin), str(exc)) from None
    except json_format.ParseError as exc:
        raise DefinitionError(str(origin), str(exc)) from None
    return origin, pb.Definition(id=resource_id, **{rtype.key: message})


def _kind(kind: Any, origin: Origin) -> resources.ResourceType:
    if isinstance(kind, str) and kind in resources.DECLARABLE:
        return resources.DECLARABLE[kind]
    kinds = [*resources.DECLARABLE, *SERVING_KINDS]
    close = difflib.get_close_matches(str(kind), kinds, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if kind is None:
        raise DefinitionError(str(origin), f"`kind` is required: one of {', '.join(kinds)}")
    raise DefinitionError(str(origin), f"kind {kind!r} is not one of {', '.join(kinds)}{hint}")


def _resolve_file_path(data: dict[str, Any], base: Path) -> None:
    """A relative FILE path is relative to the YAML file, wherever the CLI runs from."""
    file_source = data.get("file")
    path = file_source.get("path") if isinstance(file_source, dict) else None
    if isinstance(path, str) and path and "://" not in path and not Path(path).is_absolute():
        file_source["path"] = str((base / path).resolve())


def _check_unique(origins: list[Origin]) -> None:
    first: dict[tuple[str, str], Origin] = {}
    for origin in origins:
        key = (origin.kind, origin.resource_id)
        if key in first:
            what = f"{origin.kind} {origin.resource_id!r}"
            raise DefinitionError(str(origin), f"{what} is already defined in {first[key]}")
        first[key] = origin
