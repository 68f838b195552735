"""The token form: with authentication on, the services answer UNAUTHENTICATED until the
person gives a token; the console keeps it in its HTTP-only session cookie and sends it on
every call. The registry judges the token, never the console."""

from __future__ import annotations

from urllib.parse import urlsplit

from recstack.registry.v1 import registry_service_pb2 as rpb
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from services.console.clients import REGISTRY, Clients, ServiceError
from services.console.views.common import TOKEN_KEY, render

MAX_TOKEN_CHARS = 4096


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


async def login_form(request: Request) -> Response:
    return render(request, "login.html", {"next": _safe_next(request.query_params.get("next"))})


async def login(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token", "")).strip()
    target = _safe_next(str(form.get("next", "")))
    problem = await run_in_threadpool(_check, request.app.state.clients, token)
    if problem:
        return render(request, "login.html", {"next": target, "problem": problem}, status=400)
    request.session[TOKEN_KEY] = token
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", status_code=303)


def _check(clients: Clients, token: str) -> str:
    """Why the token cannot be used ('' when the registry accepts it)."""
    if not token:
        return "Enter a token."
    if len(token) > MAX_TOKEN_CHARS or any(ch.isspace() for ch in token):
        return "A token is one line without spaces."
    try:
        clients.call(REGISTRY, "ListProjects", rpb.ListProjectsRequest(page_size=1), token=token)
    except ServiceError as error:
        if error.unauthenticated:
            return f"The registry refused this token: {error.message}"
        if error.unreachable:
            return f"The registry at {error.address} is unavailable: {error.message}"
    return ""


def _safe_next(target: str | None) -> str:
    """Only a path on this console: never send the person to another site after login."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path if not parts.query else f"{parts.path}?{parts.query}"
