"""The systems the running stack serves: `Recommend` over gRPC, one scene per system.

- `pipeline`: the example's home feed as `feature_repo/scenes/home_feed.yaml` declares it
  (four recalls, both filters, the trained ranker on Triton, genre diversity) with its
  experiment, so each user is served by the variant their bucket gives;
- one scene per recall of the home feed (`recall_scenes`): that recall alone, with the
  parameters the home feed gives it and the home feed's whole candidate budget as its quota,
  then the request's exclusions and `top_n`: the recall's own order, unranked.

Every request asks for `size` items and lists the user's training items in the
`exclude_items` filter's context key, so no system recommends an item the user rated in
training (the home feed's `already_seen` filter alone sees only the 50 latest).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import recommend_service_pb2_grpc

from bench.evaluate.metrics import K
from shared.channels import ClientSettings, open_channel

PIPELINE = "pipeline"
HOME_SCENE = "movielens_home"
EXCLUDE_KEY = "exclude_item_ids"
RECALL_SCENE_PREFIX = "evaluate_"
# A degraded response (the ranker unavailable or over its deadline) is not the pipeline's
# ranking: asked again a few times, then the run fails rather than score recall order.
DEGRADED_RETRIES = 3
DEGRADED_PAUSE_S = 1.0


def scene_ids(recalls: Iterable[str]) -> dict[str, str]:
    """System name → the scene serving it."""
    return {PIPELINE: HOME_SCENE, **{r: f"{RECALL_SCENE_PREFIX}{r}" for r in recalls}}


def home_scene(documents: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    [scene] = [d for d in documents if d.get("kind") == "Scene" and d.get("id") == HOME_SCENE]
    return scene


def recall_scenes(home: Mapping[str, Any], quota: int) -> list[dict[str, Any]]:
    """A Scene document per recall of `home`: that recall alone with `quota`, the
    `exclude_items` filter, no ranking, `top_n` K."""
    documents = []
    for recall in home["recalls"]:
        documents.append(
            {
                "kind": "Scene",
                "id": f"{RECALL_SCENE_PREFIX}{recall['type']}",
                "description": f"bench.evaluate: the home feed's {recall['type']} recall alone",
                "user_entity": home["user_entity"],
                "item_entity": home["item_entity"],
                "recalls": [{**recall, "quota": quota}],
                "filters": [{"type": "exclude_items"}],
                "reranks": [{"type": "top_n"}],
                "top_n": K,
            }
        )
    return documents


@dataclass
class Served:
    """One system's lists, and how its responses were served."""

    lists: dict[int, list[int]] = field(default_factory=dict)
    # The experiment variants that served each user (the pipeline's).
    variants: dict[int, tuple[str, ...]] = field(default_factory=dict)
    empty: int = 0
    retried_degraded: int = 0
    seconds: float = 0.0


class Recommender:
    """A thin client of the recommend service."""

    def __init__(self, stub: Any, close: Callable[[], None] = lambda: None) -> None:
        self._stub = stub
        self.close = close

    @classmethod
    def connect(cls, address: str, settings: ClientSettings | None = None) -> Recommender:
        """Over a channel from the project's channel factory (TLS and tokens as configured)."""
        channel = open_channel(address, settings or ClientSettings())
        return cls(recommend_service_pb2_grpc.RecommendServiceStub(channel), channel.close)

    def recommend(
        self, scene: str, user: int, exclude: Iterable[int], size: int = K, debug: bool = False
    ) -> pb.RecommendResponse:
        excluded = value_pb2.StringList(values=[str(item) for item in sorted(exclude)])
        request = pb.RecommendRequest(
            scene=scene,
            user_id=str(user),
            size=size,
            context={EXCLUDE_KEY: value_pb2.Value(string_list_value=excluded)},
            debug=debug,
        )
        return self._stub.Recommend(request, timeout=60)

    def serve(self, scene: str, seen: Mapping[int, set[int]], size: int = K) -> Served:
        """Every user of `seen` served by `scene`, their training items excluded."""
        served = Served()
        started = time.perf_counter()
        for user, items in seen.items():
            response = self.recommend(scene, user, items, size)
            for _ in range(DEGRADED_RETRIES):
                if not response.degraded:
                    break
                served.retried_degraded += 1
                time.sleep(DEGRADED_PAUSE_S)
                response = self.recommend(scene, user, items, size)
            if response.degraded:
                raise RuntimeError(
                    f"scene {scene}, user {user}: still degraded after {DEGRADED_RETRIES} "
                    f"retries ({response.degraded_reason}); its ranking cannot be evaluated"
                )
            served.lists[user] = [int(item.item_id) for item in response.items]
            served.variants[user] = tuple(response.variants)
            served.empty += not response.items
        served.seconds = time.perf_counter() - started
        return served
