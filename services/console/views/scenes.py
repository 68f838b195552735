"""Scenes and experiments: a scene's pipeline as its stages (recall → filter → rank →
rerank) with their parameters; its experiments as layers of bucket ranges; and which variant
a user gets, asked of the recommend service (a Recommend call reports the variants that
served it: the console never recomputes the service's hashing)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from google.protobuf import json_format
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console.clients import RECOMMEND, ServiceError
from services.console.views.common import BadInput, call, list_all, render

MAX_USER_CHARS = 256


def routes() -> list[Route]:
    return [
        Route("/scenes", scenes_page),
        Route("/scenes/{scene}", scene_page),
        Route("/scenes/{scene}/variant", variant_fragment),
    ]


def scenes_page(request: Request) -> Response:
    scenes = _scenes(request)
    project = request.query_params.get("project", "")
    if project:
        scenes = [s for s in scenes if s.project == project]
    experiments = _experiments(request)
    counts: dict[str, int] = defaultdict(int)
    for experiment in experiments:
        counts[_short(experiment.scene)] += 1
    context = {"scenes": scenes, "project": project, "experiment_counts": counts, "short": _short}
    return render(request, "scenes.html", context)


def scene_page(request: Request) -> Response:
    scene_id = request.path_params["scene"]
    scene = call(request, RECOMMEND, "GetScene", cpb.GetSceneRequest(name=f"scenes/{scene_id}"))
    experiments = [e for e in _experiments(request) if _short(e.scene) == scene_id]
    layers: dict[str, list[Any]] = defaultdict(list)
    for experiment in experiments:
        layers[experiment.layer or "(default)"].append(experiment)
    context = {
        "scene_id": scene_id,
        "scene": scene.scene,
        "stages": _stages(scene.scene),
        "layers": dict(sorted(layers.items())),
        "short": _short,
        "struct_json": _struct_json,
    }
    return render(request, "scene.html", context)


def variant_fragment(request: Request) -> Response:
    scene_id = request.path_params["scene"]
    user = (request.query_params.get("user") or "").strip()
    if not user or len(user) > MAX_USER_CHARS:
        raise BadInput(f"user: give a user id of 1 to {MAX_USER_CHARS} characters")
    message = cpb.RecommendRequest(scene=scene_id, user_id=user, size=1)
    try:
        response = call(request, RECOMMEND, "Recommend", message)
    except ServiceError as error:
        if error.unauthenticated or error.unreachable:
            raise
        return render(request, "action_result.html", {"error": f"recommend refused: {error}"})
    context = {"user": user, "variants": list(response.variants)}
    return render(request, "variant_result.html", context)


def _scenes(request: Request) -> list[Any]:
    return list_all(
        request,
        RECOMMEND,
        "ListScenes",
        lambda token: cpb.ListScenesRequest(page_size=1000, page_token=token),
        "scenes",
    )


def _experiments(request: Request) -> list[Any]:
    return list_all(
        request,
        RECOMMEND,
        "ListExperiments",
        lambda token: cpb.ListExperimentsRequest(page_size=1000, page_token=token),
        "experiments",
    )


def _stages(scene: Any) -> list[dict[str, Any]]:
    """The pipeline in order: each step a kind and its stages (name, type, quota, params)."""

    def stage(config: Any) -> dict[str, Any]:
        return {
            "name": config.name or config.type,
            "type": config.type,
            "quota": config.quota,
            "params": _struct_json(config.params),
        }

    steps = [
        {"kind": "recall", "stages": [stage(c) for c in scene.recalls]},
        {"kind": "filter", "stages": [stage(c) for c in scene.filters]},
    ]
    if scene.HasField("rank"):
        rank = scene.rank
        params = json_format.MessageToDict(rank, preserving_proto_field_name=True)
        steps.append(
            {
                "kind": "rank",
                "stages": [
                    {
                        "name": rank.model or rank.model_name or "rank",
                        "type": "model" if rank.model else "triton model",
                        "quota": 0,
                        "params": _dict_json(params),
                    }
                ],
            }
        )
    steps.append({"kind": "rerank", "stages": [stage(c) for c in scene.reranks]})
    return [step for step in steps if step["stages"]]


def _struct_json(struct: Any) -> str:
    return _dict_json(_integral(json_format.MessageToDict(struct))) if struct.fields else ""


def _integral(value: Any) -> Any:
    """Struct numbers are all doubles: show `5`, not `5.0`, where a quota or top_n was meant."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _dict_json(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, sort_keys=True) if value else ""


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]
