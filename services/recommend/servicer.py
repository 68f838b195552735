"""gRPC edge of recommend: request messages → domain calls → response messages.

No error handling here: domain errors become statuses in the shared interceptor.
"""

from __future__ import annotations

import grpc
from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import recommend_service_pb2_grpc

from services.recommend.catalog import EXPERIMENT, SCENE, Catalog
from services.recommend.recommender import (
    Recommender,
    RecommendQuery,
    ScoredItem,
    ScoreQuery,
    Scores,
)
from shared.request_context import request_id
from shared.values import from_proto, generated_value


def _context(values: dict[str, value_pb2.Value]) -> dict[str, object]:
    return {name: from_proto(value) for name, value in values.items()}


def _item(item: ScoredItem) -> pb.RecommendedItem:
    return pb.RecommendedItem(
        item_id=item.item_id,
        score=item.score,
        recall_sources=item.recall_sources,
        model_scores=item.model_scores,
    )


def _generated(scores: Scores) -> list[pb.GeneratedFeatures]:
    if scores.features is None:
        return []
    return [
        pb.GeneratedFeatures(
            item_id=item.item_id,
            features={name: generated_value(array[row]) for name, array in scores.features.items()},
        )
        for row, item in enumerate(scores.items)
    ]


class RecommendServicer(recommend_service_pb2_grpc.RecommendServiceServicer):
    def __init__(self, catalog: Catalog, recommender: Recommender) -> None:
        self._catalog = catalog
        self._recommender = recommender

    # --- serving --------------------------------------------------------------------------

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        result = self._recommender.recommend(
            RecommendQuery(
                request.scene,
                request.user_id,
                _context(dict(request.context)),
                request.size,
                request.debug,
            )
        )
        return pb.RecommendResponse(
            items=[_item(item) for item in result.items],
            variants=result.variants,
            request_id=request_id(),
            stage_counts=result.stage_counts,
            degraded=bool(result.degraded),
            degraded_reason=result.degraded,
            empty_reason=result.empty_reason,
            stage_millis=result.stage_millis,
        )

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        scores = self._recommender.score(
            ScoreQuery(
                request.scene,
                request.user_id,
                list(request.item_ids),
                _context(dict(request.context)),
                request.debug_level,
            )
        )
        return pb.ScoreResponse(
            items=[_item(item) for item in scores.items], generated_features=_generated(scores)
        )

    # --- scenes ---------------------------------------------------------------------------

    def CreateScene(
        self, request: pb.CreateSceneRequest, context: grpc.ServicerContext
    ) -> pb.CreateSceneResponse:
        scene = self._catalog.create(SCENE, request.scene_id, request.scene, request.validate_only)
        return pb.CreateSceneResponse(scene=scene)

    def GetScene(
        self, request: pb.GetSceneRequest, context: grpc.ServicerContext
    ) -> pb.GetSceneResponse:
        return pb.GetSceneResponse(scene=self._catalog.get(SCENE, request.name))

    def ListScenes(
        self, request: pb.ListScenesRequest, context: grpc.ServicerContext
    ) -> pb.ListScenesResponse:
        page = self._catalog.list(SCENE, request.page_size, request.page_token, request.filter)
        return pb.ListScenesResponse(scenes=page.items, next_page_token=page.next_page_token)

    def UpdateScene(
        self, request: pb.UpdateSceneRequest, context: grpc.ServicerContext
    ) -> pb.UpdateSceneResponse:
        scene = self._catalog.update(SCENE, request.scene, list(request.update_mask.paths))
        return pb.UpdateSceneResponse(scene=scene)

    def DeleteScene(
        self, request: pb.DeleteSceneRequest, context: grpc.ServicerContext
    ) -> pb.DeleteSceneResponse:
        self._catalog.delete(SCENE, request.name, request.etag)
        return pb.DeleteSceneResponse()

    # --- experiments ----------------------------------------------------------------------

    def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: grpc.ServicerContext
    ) -> pb.CreateExperimentResponse:
        experiment = self._catalog.create(
            EXPERIMENT, request.experiment_id, request.experiment, request.validate_only
        )
        return pb.CreateExperimentResponse(experiment=experiment)

    def GetExperiment(
        self, request: pb.GetExperimentRequest, context: grpc.ServicerContext
    ) -> pb.GetExperimentResponse:
        return pb.GetExperimentResponse(experiment=self._catalog.get(EXPERIMENT, request.name))

    def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.ServicerContext
    ) -> pb.ListExperimentsResponse:
        page = self._catalog.list(EXPERIMENT, request.page_size, request.page_token, request.filter)
        return pb.ListExperimentsResponse(
            experiments=page.items, next_page_token=page.next_page_token
        )

    def UpdateExperiment(
        self, request: pb.UpdateExperimentRequest, context: grpc.ServicerContext
    ) -> pb.UpdateExperimentResponse:
        experiment = self._catalog.update(
            EXPERIMENT, request.experiment, list(request.update_mask.paths)
        )
        return pb.UpdateExperimentResponse(experiment=experiment)

    def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: grpc.ServicerContext
    ) -> pb.DeleteExperimentResponse:
        self._catalog.delete(EXPERIMENT, request.name, request.etag)
        return pb.DeleteExperimentResponse()
