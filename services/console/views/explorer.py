"""The recommendation explorer: a user and a scene → what Recommend returns with `debug`
(items, recall sources, every model output, stage counts and timings, the variants), and an
item's generated model inputs from Score with debug level 1."""

from __future__ import annotations

from typing import Any

from recstack.recommend.v1 import recommend_service_pb2 as cpb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console.clients import RECOMMEND, ServiceError
from services.console.views.common import BadInput, call, list_all, render
from shared import values

MAX_ID_CHARS = 256
MAX_SIZE = 500


def routes() -> list[Route]:
    return [
        Route("/explorer", explorer_page),
        Route("/explorer/features", item_features_fragment),
    ]


def explorer_page(request: Request) -> Response:
    params = request.query_params
    scenes = list_all(
        request,
        RECOMMEND,
        "ListScenes",
        lambda token: cpb.ListScenesRequest(page_size=1000, page_token=token),
        "scenes",
    )
    scene, user = (params.get("scene") or "").strip(), (params.get("user") or "").strip()
    context: dict[str, Any] = {
        "scenes": [s.name.rsplit("/", 1)[-1] for s in scenes],
        "scene": scene,
        "user": user,
        "size": params.get("size") or "",
        "response": None,
        "refused": "",
    }
    if scene and user:
        message = cpb.RecommendRequest(
            scene=scene, user_id=_id(user, "user"), size=_size(params.get("size")), debug=True
        )
        try:
            context["response"] = call(request, RECOMMEND, "Recommend", message)
        except ServiceError as error:
            if error.unauthenticated or error.unreachable:
                raise
            context["refused"] = f"recommend refused ({error.code_name}): {error.message}"
    return render(request, "explorer.html", {**context, "outputs": _outputs(context["response"])})


def item_features_fragment(request: Request) -> Response:
    params = request.query_params
    scene = _id(params.get("scene") or "", "scene")
    message = cpb.ScoreRequest(
        scene=scene,
        user_id=_id(params.get("user") or "", "user"),
        item_ids=[_id(params.get("item") or "", "item")],
        debug_level=1,
    )
    try:
        response = call(request, RECOMMEND, "Score", message)
    except ServiceError as error:
        if error.unauthenticated or error.unreachable:
            raise
        return render(request, "action_result.html", {"error": f"Score refused: {error}"})
    generated = response.generated_features[0] if response.generated_features else None
    features = (
        sorted((name, values.from_proto(v)) for name, v in generated.features.items())
        if generated
        else []
    )
    item = response.items[0] if response.items else None
    context = {"item": item, "features": features, "item_id": message.item_ids[0]}
    return render(request, "item_features.html", context)


def _outputs(response: Any) -> list[str]:
    """Every model output name any item carries, in a stable order: the table's columns."""
    if response is None:
        return []
    return sorted({name for item in response.items for name in item.model_scores})


def _id(value: str, field: str) -> str:
    text = value.strip()
    if not text or len(text) > MAX_ID_CHARS:
        raise BadInput(f"{field}: give an id of 1 to {MAX_ID_CHARS} characters")
    return text


def _size(value: str | None) -> int:
    if not value:
        return 0
    if not value.isdigit() or not 1 <= int(value) <= MAX_SIZE:
        raise BadInput(f"size: {value!r} is not a number from 1 to {MAX_SIZE}")
    return int(value)
