"""Rendering: Jinja2 templates with what every page needs (the CSRF token, whether a token
is held, which services the console talks to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from services.console import timeline
from services.console.clients import ServiceError

NAV = (
    ("/registry", "Registry"),
    ("/materialization", "Materialization"),
    ("/features", "Online features"),
    ("/scenes", "Scenes & experiments"),
    ("/models", "Models"),
    ("/explorer", "Explorer"),
)


class Pages:
    def __init__(self, directory: Path, csrf_field: str) -> None:
        self._templates = Jinja2Templates(directory=directory)
        self._templates.env.globals.update(
            nav=NAV, csrf_field=csrf_field, colours=timeline.STATUS_COLOURS, iso=timeline.iso
        )
        self._templates.env.filters["ts"] = _timestamp

    def render(
        self, request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
    ) -> Response:
        csrf = request.scope.get("csrftoken")
        values = {
            "csrf_token": csrf() if csrf else "",
            "signed_in": bool(request.session.get("token")),
            **(context or {}),
        }
        return self._templates.TemplateResponse(request, name, values, status_code=status)

    def service_error(self, request: Request, error: ServiceError) -> Response:
        # A fragment for htmx requests (it lands where the fragment would), a page otherwise.
        name = "error_fragment.html" if request.headers.get("hx-request") else "error.html"
        status = 503 if error.unreachable else 502
        # htmx swaps only 2xx answers by default: the fragment says 200 so it is shown.
        if request.headers.get("hx-request"):
            status = 200
        return self.render(request, name, {"error": error}, status=status)


def _timestamp(value: Any) -> str:
    """A protobuf Timestamp in the page's UTC format; '-' when unset."""
    if value is None or (not value.seconds and not value.nanos):
        return "-"
    return timeline.iso(timeline.to_utc(value))
