"""Models: each model's versions with their metrics, states and Triton names; activate a
version (the registry deploys it to Triton first when needed) or roll back to the previous
one, each one registry call."""

from __future__ import annotations

from typing import Any

from recstack.registry.v1 import model_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console.clients import REGISTRY, ServiceError
from services.console.views.common import call, list_all, list_projects, render

# Activation may load the version into Triton first: allow for it.
ACTIVATE_TIMEOUT_S = 120.0
State = model_pb2.ModelVersion.State


def routes() -> list[Route]:
    base = "/models/{project}"
    return [
        Route("/models", models_index),
        Route(base, project_models),
        Route(f"{base}/list", models_fragment),
        Route(f"{base}/{{model}}/versions/{{version:int}}/activate", activate, methods=["POST"]),
        Route(f"{base}/{{model}}/rollback", rollback, methods=["POST"]),
    ]


def models_index(request: Request) -> Response:
    projects = list_projects(request)
    return render(request, "models_index.html", {"projects": projects})


def project_models(request: Request) -> Response:
    return render(request, "models.html", _context(request))


def models_fragment(request: Request) -> Response:
    return render(request, "models_list.html", _context(request))


async def activate(request: Request) -> Response:
    project, model = request.path_params["project"], request.path_params["model"]
    name = f"projects/{project}/models/{model}/versions/{request.path_params['version']}"
    message = rpb.ActivateModelVersionRequest(name=name)
    return await _act(
        request, "ActivateModelVersion", message, f"{model} v{name.rsplit('/')[-1]} is active."
    )


async def rollback(request: Request) -> Response:
    project, model = request.path_params["project"], request.path_params["model"]
    message = rpb.RollbackModelRequest(name=f"projects/{project}/models/{model}")
    return await _act(request, "RollbackModel", message, f"{model} rolled back.")


async def _act(request: Request, method: str, message: Any, done: str) -> Response:
    try:
        await run_in_threadpool(call, request, REGISTRY, method, message, ACTIVATE_TIMEOUT_S)
    except ServiceError as error:
        if error.unauthenticated or error.unreachable:
            raise
        return render(
            request,
            "action_result.html",
            {"error": f"registry refused ({error.code_name}): {error}"},
        )
    response = render(request, "action_result.html", {"done": done})
    response.headers["HX-Trigger"] = "refresh"
    return response


def _context(request: Request) -> dict[str, Any]:
    project = request.path_params["project"]
    models = list_all(
        request,
        REGISTRY,
        "ListModels",
        lambda token: rpb.ListModelsRequest(
            parent=f"projects/{project}", page_size=1000, page_token=token
        ),
        "models",
    )
    versions = {
        model.name: list_all(
            request,
            REGISTRY,
            "ListModelVersions",
            lambda token, m=model.name: rpb.ListModelVersionsRequest(
                parent=m, page_size=1000, page_token=token
            ),
            "model_versions",
        )
        for model in models
    }
    return {
        "project": project,
        "models": models,
        "versions": versions,
        "state_name": lambda s: State.Name(s).removeprefix("STATE_"),
        "short": lambda name: name.rsplit("/", 1)[-1],
    }
