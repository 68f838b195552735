"""The console's ASGI application: routes, sessions, CSRF protection, templates, files.

Views live in `services/console/views/`; each returns a page or an htmx fragment. A
`ServiceError` escaping a view becomes a page saying which service failed and how, and an
UNAUTHENTICATED answer sends the person to the token form: the services decide, the console
only asks.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from asgi_csrf import asgi_csrf
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from services.console.clients import Clients, ServiceError
from services.console.pages import Pages
from services.console.views import (
    auth,
    explorer,
    features,
    materialization,
    models,
    registry,
    scenes,
)
from services.console.views.common import BadInput

if TYPE_CHECKING:
    from services.console.server import ConsoleSettings

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "recstack_console"
CSRF_COOKIE = "recstack_csrf"
# The form field asgi-csrf reads (its fixed name).
CSRF_FIELD = "csrftoken"
# The files the pages load, each from its npm package (no CDN, no network at run time).
VENDOR_FILES = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "vega.min.js": "vega/build/vega.min.js",
    "vega-lite.min.js": "vega-lite/build/vega-lite.min.js",
    "vega-embed.min.js": "vega-embed/build/vega-embed.min.js",
}


def create_app(settings: ConsoleSettings, clients: Clients) -> ASGIApp:
    vendor = vendor_files(settings.console_vendor_dir)
    routes = [
        Route("/healthz", healthz),
        Route("/favicon.ico", lambda _: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        Route("/vendor/{name}", partial(vendor_file, vendor)),
        *auth.routes(),
        *registry.routes(),
        *materialization.routes(),
        *features.routes(),
        *scenes.routes(),
        *models.routes(),
        *explorer.routes(),
    ]
    session = Middleware(
        SessionMiddleware,
        secret_key=settings.console_session_secret.get_secret_value(),
        session_cookie=SESSION_COOKIE,
        same_site="strict",
        https_only=settings.console_secure_cookies,
    )
    app = Starlette(
        routes=routes,
        middleware=[session],
        exception_handlers={ServiceError: service_error, BadInput: bad_input},
    )
    app.state.clients = clients
    app.state.pages = Pages(HERE / "templates", CSRF_FIELD)
    # Every POST (htmx sends the token as a header, plain forms as a field) must carry the
    # token of the CSRF cookie; the token form is checked even before any cookie exists.
    return asgi_csrf(
        app,
        signing_secret=settings.console_session_secret.get_secret_value(),
        cookie_name=CSRF_COOKIE,
        http_header="x-csrftoken",
        always_protect=EveryPath(),
        always_set_cookie=True,
        cookie_secure=settings.console_secure_cookies,
    )


class EveryPath:
    """asgi-csrf's `always_protect` as "every path": by default it lets a POST without any
    cookie through, which would leave the forms open to other sites while auth is off."""

    def __contains__(self, path: object) -> bool:
        return True


def vendor_files(root: Path) -> dict[str, Path]:
    """The vendor files by URL name; each must exist under `root`, so a console without them
    stops at start-up instead of serving pages without their scripts."""
    files = {name: root / path for name, path in VENDOR_FILES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise RuntimeError(
            f"console: {', '.join(missing)} missing: run `npm install` (make setup) "
            "or set RECSTACK_CONSOLE_VENDOR_DIR"
        )
    return files


async def vendor_file(files: dict[str, Path], request: Request) -> Response:
    """Only the listed files: the rest of node_modules is never served."""
    path = files.get(request.path_params["name"])
    if path is None:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.unauthenticated:
        request.session.pop(auth.TOKEN_KEY, None)
        target = f"/login?next={request.url.path}"
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    pages: Pages = request.app.state.pages
    return pages.service_error(request, exc)


async def bad_input(request: Request, exc: Exception) -> Response:
    pages: Pages = request.app.state.pages
    # htmx swaps only 2xx answers: a fragment says 200 so its message is shown.
    if request.headers.get("hx-request"):
        return pages.render(request, "bad_input.html", {"problem": str(exc)})
    return pages.render(request, "bad_input_page.html", {"problem": str(exc)}, status=400)
