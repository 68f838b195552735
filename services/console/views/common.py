"""What every view uses: the clients, the person's token, rendering, form values."""

from __future__ import annotations

from typing import Any

from recstack.registry.v1 import registry_service_pb2 as rpb
from starlette.requests import Request
from starlette.responses import Response

from services.console.clients import REGISTRY, Clients

TOKEN_KEY = "token"


class BadInput(ValueError):
    """A form or query value a page cannot use; its message says which and why."""


def call(
    request: Request, service: str, method: str, message: Any, timeout: float | None = None
) -> Any:
    """One call to `service` as the person: their token, if they gave one."""
    clients: Clients = request.app.state.clients
    token = request.session.get(TOKEN_KEY, "")
    if timeout is None:
        return clients.call(service, method, message, token=token)
    return clients.call(service, method, message, token=token, timeout=timeout)


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> Response:
    return request.app.state.pages.render(request, name, context, status)


def list_projects(request: Request) -> list[Any]:
    """Every project the registry lists (the index pages' first choice)."""
    return list_all(
        request,
        REGISTRY,
        "ListProjects",
        lambda token: rpb.ListProjectsRequest(page_size=1000, page_token=token),
        "projects",
    )


def list_all(
    request: Request, service: str, method: str, make: Any, field: str, limit: int = 5000
) -> list[Any]:
    """Every item of a paged List call: `make(page_token)` builds each page's request."""
    items: list[Any] = []
    token = ""
    while len(items) < limit:
        response = call(request, service, method, make(token))
        items.extend(getattr(response, field))
        token = response.next_page_token
        if not token:
            break
    return items[:limit]
