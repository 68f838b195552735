"""The registry pages: projects; a project's entities, data sources, feature views, embedding
models and model feature sets; a feature view's versions with its schema (as a table and as
JSON), its transformation and produced fields; a diff between two versions."""

from __future__ import annotations

import difflib
import re
from typing import Any

from google.protobuf import json_format
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import feature_view_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console.clients import REGISTRY
from services.console.views.common import BadInput, call, list_all, list_projects, render

# Output-only bookkeeping that changes with every version: left out of the diff.
DIFF_IGNORED = ("etag", "create_time", "update_time")
Production = feature_view_pb2.FeatureProduction


def routes() -> list[Route]:
    return [
        Route("/", projects),
        Route("/registry", projects),
        Route("/registry/{project}", project_page),
        Route("/registry/{project}/views/{view}", view_page),
        Route("/registry/{project}/views/{view}/diff", diff_page),
    ]


def projects(request: Request) -> Response:
    found = list_projects(request)
    return render(request, "projects.html", {"projects": found})


def project_page(request: Request) -> Response:
    project = request.path_params["project"]
    parent = f"projects/{project}"
    got = call(request, REGISTRY, "GetProject", rpb.GetProjectRequest(name=parent)).project
    sections = {
        "entities": _list(request, "ListEntities", rpb.ListEntitiesRequest, parent, "entities"),
        "sources": _list(
            request, "ListDataSources", rpb.ListDataSourcesRequest, parent, "data_sources"
        ),
        "views": _list(
            request, "ListFeatureViews", rpb.ListFeatureViewsRequest, parent, "feature_views"
        ),
        "models": _list(
            request,
            "ListEmbeddingModels",
            rpb.ListEmbeddingModelsRequest,
            parent,
            "embedding_models",
        ),
        "feature_sets": _list(
            request,
            "ListModelFeatureSets",
            rpb.ListModelFeatureSetsRequest,
            parent,
            "model_feature_sets",
        ),
    }
    return render(
        request, "registry_project.html", {"project": project, "info": got, **sections, **HELPERS}
    )


def view_page(request: Request) -> Response:
    project, view = request.path_params["project"], request.path_params["view"]
    latest = _view(request, project, view, 0)
    version = _version(request.query_params.get("version"), latest.version)
    shown = latest if version == latest.version else _view(request, project, view, version)
    context = {
        "project": project,
        "view_id": view,
        "view": shown,
        "latest": latest.version,
        "versions": list(range(latest.version, 0, -1)),
        "json": _json(shown),
        "fields": [_field(f) for f in shown.fields],
        "transformation": _transformation(shown),
        **HELPERS,
    }
    return render(request, "registry_view.html", context)


def diff_page(request: Request) -> Response:
    project, view = request.path_params["project"], request.path_params["view"]
    latest = _view(request, project, view, 0).version
    old = _version(request.query_params.get("a"), latest)
    new = _version(request.query_params.get("b"), latest)
    before = _json(_view(request, project, view, old), ignore=DIFF_IGNORED).splitlines()
    after = _json(_view(request, project, view, new), ignore=DIFF_IGNORED).splitlines()
    lines = list(difflib.unified_diff(before, after, f"v{old}", f"v{new}", lineterm="", n=3))
    context = {
        "project": project,
        "view_id": view,
        "old": old,
        "new": new,
        "latest": latest,
        "versions": list(range(latest, 0, -1)),
        "lines": [(_line_class(line), line) for line in lines],
    }
    return render(request, "registry_diff.html", context)


# --- helpers ---------------------------------------------------------------------------


def _list(request: Request, method: str, make: Any, parent: str, field: str) -> list[Any]:
    return list_all(
        request,
        REGISTRY,
        method,
        lambda token: make(parent=parent, page_size=1000, page_token=token),
        field,
    )


def _view(request: Request, project: str, view: str, version: int) -> feature_view_pb2.FeatureView:
    name = f"projects/{project}/featureViews/{view}"
    message = rpb.GetFeatureViewRequest(name=name, version=version)
    return call(request, REGISTRY, "GetFeatureView", message).feature_view


def _version(value: str | None, latest: int) -> int:
    if not value:
        return latest
    if not value.isdigit() or not 1 <= int(value) <= latest:
        raise BadInput(f"version: {value!r} is not a version between 1 and {latest}")
    return int(value)


def _json(message: Any, ignore: tuple[str, ...] = ()) -> str:
    copy = type(message)()
    copy.CopyFrom(message)
    for field in ignore:
        copy.ClearField(field)
    return json_format.MessageToJson(copy, preserving_proto_field_name=True, indent=2)


def _field(field: feature_view_pb2.FeatureField) -> dict[str, str]:
    production = ""
    if field.HasField("production"):
        p = field.production
        transform = Production.Transform.Name(p.transform).removeprefix("TRANSFORM_")
        production = f"{transform} of {p.input_field or '?'}"
        if p.embedding_model:
            production += f" with {p.embedding_model}"
    return {
        "name": field.name,
        "type": value_type(field.value_type),
        "production": production,
        "description": field.description,
    }


def _transformation(view: feature_view_pb2.FeatureView) -> dict[str, str]:
    kind = view.transformation.WhichOneof("kind")
    if kind == "sql":
        return {"kind": "SQL", "text": view.transformation.sql}
    if kind == "aggregations":
        return {"kind": "aggregations", "text": _json(view.transformation.aggregations)}
    return {}


def _line_class(line: str) -> str:
    if line.startswith(("+++", "---", "@@")):
        return "diff-head"
    return {"+": "diff-added", "-": "diff-removed"}.get(line[:1], "")


def value_type(value: int) -> str:
    return value_pb2.ValueType.Name(value).removeprefix("VALUE_TYPE_")


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def enum_name(message: Any, field: str) -> str:
    """An enum field's value name without its prefix (`PROVIDER_TRITON` -> `TRITON`)."""
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    name = descriptor.values_by_number[getattr(message, field)].name
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper()
    return name.removeprefix(f"{prefix}_")


def source_kind(source: Any) -> str:
    kind = source.WhichOneof("kind") or ""
    return {"file": "file", "postgres": "PostgreSQL", "push": "push"}.get(kind, kind)


HELPERS = {
    "short": short,
    "value_type": value_type,
    "enum_name": enum_name,
    "source_kind": source_kind,
    "to_json": _json,
}
