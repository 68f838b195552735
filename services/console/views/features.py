"""The online features page: one entity's features of a view, read with the serving API as
any client reads them, each with its status (present, not found, outside TTL), event time and
age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console import timeline
from services.console.clients import REGISTRY, SERVING
from services.console.views.common import BadInput, call, list_all, list_projects, render
from shared import values

MAX_KEY_CHARS = 512


def routes() -> list[Route]:
    return [Route("/features", features_page)]


def features_page(request: Request) -> Response:
    params = request.query_params
    projects = list_projects(request)
    project = params.get("project") or ""
    views = _online_views(request, project) if project else []
    context: dict[str, Any] = {
        "projects": [p.name.rsplit("/", 1)[-1] for p in projects],
        "project": project,
        "views": [v.name.rsplit("/", 1)[-1] for v in views],
        "view": params.get("view") or "",
        "key": params.get("key") or "",
        "rows": None,
    }
    if project and context["view"] and context["key"]:
        context["rows"] = _lookup(request, project, context["view"], context["key"])
    return render(request, "features.html", context)


def _online_views(request: Request, project: str) -> list[Any]:
    views = list_all(
        request,
        REGISTRY,
        "ListFeatureViews",
        lambda token: rpb.ListFeatureViewsRequest(
            parent=f"projects/{project}", page_size=1000, page_token=token
        ),
        "feature_views",
    )
    return [v for v in views if v.online_enabled]


def _lookup(request: Request, project: str, view: str, key_text: str) -> list[dict[str, Any]]:
    name = f"projects/{project}/featureViews/{view}"
    definition = call(request, REGISTRY, "GetFeatureView", rpb.GetFeatureViewRequest(name=name))
    entity_name = f"projects/{project}/entities/{definition.feature_view.entity}"
    entity = call(request, REGISTRY, "GetEntity", rpb.GetEntityRequest(name=entity_name)).entity
    key = values.to_proto(_key(key_text, entity.key_type), entity.key_type)
    message = spb.GetOnlineFeaturesRequest(
        project=project, features=[f"{view}:*"], entity_keys=[key]
    )
    response = call(request, SERVING, "GetOnlineFeatures", message)
    now = datetime.now(UTC)
    return [
        _row(name, column, now)
        for name, column in zip(response.feature_names, response.columns, strict=True)
    ]


def _row(name: str, column: Any, now: datetime) -> dict[str, Any]:
    status = spb.FeatureStatus.Name(column.statuses[0]).removeprefix("FEATURE_STATUS_")
    event = column.event_times[0] if column.event_times else None
    when = timeline.to_utc(event) if event is not None and (event.seconds or event.nanos) else None
    return {
        "name": name,
        "value": values.from_proto(column.values[0]),
        "status": status,
        "event_time": timeline.iso(when) if when else "",
        "age": _age(now - when) if when else "",
    }


def _key(text: str, key_type: int) -> Any:
    text = text.strip()
    if len(text) > MAX_KEY_CHARS:
        raise BadInput(f"key: longer than {MAX_KEY_CHARS} characters")
    if key_type == values.VT.VALUE_TYPE_INT64:
        try:
            return int(text)
        except ValueError:
            raise BadInput(f"key: {text!r} is not an integer (the entity's key is INT64)") from None
    return text


def _age(age: timedelta) -> str:
    """`3d 4h`, `5h 2m`, `12m 3s`, `4s`: the two largest units."""
    seconds = max(int(age.total_seconds()), 0)
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts = []
    for suffix, size in units:
        if seconds >= size or (suffix == "s" and not parts):
            parts.append(f"{seconds // size}{suffix}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)
