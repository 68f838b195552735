"""The systems the running stack serves: `Recommend` over gRPC, one scene per system.

The scenes are written into the evaluation's scratch copy of the feature repository, built
from the example's `scenes/home_feed.yaml` (`scenes`):
- `pipeline`: the home feed as the file declares it (four recalls, both filters, the trained
  ranker on Triton, genre diversity), for every user: the experiment is not applied, since it
  would serve each user one variant;
- `pipeline_<variant>`: the home feed with the overrides of each variant of its experiment
  that has any (merged as the recommend service merges them), also for every user;
- one scene per recall of the home feed: that recall alone, with the parameters the home
  feed gives it and the home feed's whole candidate budget as its quota, then the request's
  exclusions and `top_n`, so its own order, unranked; and `popular_365d`, the `popular`
  recall over the whole training history's count instead of the home feed's 30-day one
  (classical most-popular).

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
from services.recommend.experiments import merge
from shared.channels import ClientSettings, open_channel

PIPELINE = "pipeline"
HOME_SCENE = "movielens_home"
EXCLUDE_KEY = "exclude_item_ids"
SCENE_PREFIX = "evaluate_"
# `popular_365d`: the popular recall over the count of every training rating (365 days
# cover the whole data set).
ALL_HISTORY = ("popular_365d", "item_ratings_365d")
# A degraded response (the ranker unavailable or over its deadline) is not the pipeline's
# ranking: asked again a few times, then the run fails rather than score recall order.
DEGRADED_RETRIES = 3
DEGRADED_PAUSE_S = 1.0


@dataclass(frozen=True)
class Scenes:
    """The scene documents to apply (the home feed without its experiment, then the
    evaluation's) and the scene that serves each system, in report order."""

    documents: list[dict[str, Any]]
    systems: dict[str, str]


def scenes(documents: Sequence[Mapping[str, Any]], quota: int) -> Scenes:
    """Every evaluated scene, from the documents of `home_feed.yaml`; recalls alone get
    `quota`."""
    home = home_scene(documents)
    written: list[dict[str, Any]] = [dict(home)]
    systems = {PIPELINE: HOME_SCENE}
    for experiment in (d for d in documents if d.get("kind") == "Experiment"):
        if experiment.get("scene") != HOME_SCENE:
            continue
        for variant in experiment["variants"]:
            if variant.get("overrides"):
                name = f"{PIPELINE}_{variant['name']}"
                scene = merge(home, variant["overrides"])
                written.append(
                    {
                        **scene,
                        "id": f"{SCENE_PREFIX}{name}",
                        "description": f"bench.evaluate: the home feed, variant {name}",
                    }
                )
                systems[name] = f"{SCENE_PREFIX}{name}"
    recalls = {recall["type"]: recall for recall in home["recalls"]}
    name, feature = ALL_HISTORY
    recalls[name] = {
        **recalls["popular"],
        "params": {**recalls["popular"]["params"], "feature": feature},
    }
    for name, recall in recalls.items():
        written.append(recall_scene(home, name, recall, quota))
        systems[name] = f"{SCENE_PREFIX}{name}"
    return Scenes(written, systems)


def recall_scene(
    home: Mapping[str, Any], name: str, recall: Mapping[str, Any], quota: int
) -> dict[str, Any]:
    """A Scene document of `recall` alone with `quota`, the `exclude_items` filter, no
    ranking, `top_n` K."""
    return {
        "kind": "Scene",
        "id": f"{SCENE_PREFIX}{name}",
        "description": f"bench.evaluate: the home feed's {recall['type']} recall alone",
        "user_entity": home["user_entity"],
        "item_entity": home["item_entity"],
        "recalls": [{**recall, "quota": quota}],
        "filters": [{"type": "exclude_items"}],
        "reranks": [{"type": "top_n"}],
        "top_n": K,
    }


def home_scene(documents: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return _one(documents, "Scene", HOME_SCENE)


def _one(documents: Sequence[Mapping[str, Any]], kind: str, id_: str) -> Mapping[str, Any]:
    [found] = [d for d in documents if d.get("kind") == kind and d.get("id") == id_]
    return found


@dataclass
class Served:
    """One system's lists, and how its responses were served."""

    lists: dict[int, list[int]] = field(default_factory=dict)
    # Users served by an experiment variant: none, as no experiment is applied.
    routed: int = 0
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
            served.routed += bool(response.variants)
            served.empty += not response.items
        served.seconds = time.perf_counter() - started
        return served
