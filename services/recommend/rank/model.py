"""Rank `model`: user and item features → feature generator → a model on the model server.

The scene's `RankConfig.features` are `view:feature` refs of the user's or the item's feature
views, in model-input order. User values come from the `UserFeatureReader` (one call per
request), item values from the item cache. Each ref becomes one `raw_feature` of the shared
feature generator, the same code training uses, and the resulting float32 matrix is the
model's `features` input. With no `model_name` the stage keeps recall order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from recstack.recommend.v1 import scene_pb2

from services.recommend.item_cache import NUMERIC_TYPES
from services.recommend.pipeline import (
    ITEM_ID,
    MODEL_INPUTS,
    MODEL_OUTPUT_PREFIX,
    RANK_TYPE,
    SCORE,
    BuildContext,
    Candidates,
    Definitions,
    StageDeps,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from shared.feature_generator import (
    ITEM,
    USER,
    FeatureConfigError,
    FeatureGenerator,
    FeatureValueError,
)
from shared.values import VT, type_name

# The ranking-model contract: one FP32 matrix input [batch, n_features] named `features`.
MODEL_INPUT = "features"


@dataclass(frozen=True)
class FeatureSource:
    """Where one configured ref is read: the user's or the item's side, which view, which field."""

    ref: str
    side: str
    view: str
    feature: str


def _int_key(user_id: str) -> int:
    try:
        return int(user_id)
    except ValueError:
        raise InvalidArgument(
            "user_id", f"{user_id!r} is not an integer, and the scene's user entity has INT64 keys"
        ) from None


# How a request's string user id becomes a key of the user entity's key type.
USER_KEY_PARSERS: Mapping[int, Callable[[str], Any]] = {
    VT.VALUE_TYPE_INT64: _int_key,
    VT.VALUE_TYPE_STRING: str,
}


class ModelRank:
    def __init__(
        self,
        scene_id: str,
        scene: scene_pb2.Scene,
        sources: Sequence[FeatureSource],
        user_key_type: int,
        deps: StageDeps,
    ) -> None:
        self._scene_id = scene_id
        self._project = scene.project
        self._rank = scene.rank
        self._user_refs = [s.ref for s in sources if s.side == USER]
        self._item_sources = [s for s in sources if s.side == ITEM]
        self._user_key_type = user_key_type
        self._deps = deps
        self._generator = _generator(scene_id, sources)
        self.feature_names = self._generator.output_names
        self.item_views = tuple(dict.fromkeys(s.view for s in self._item_sources))

    def rank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        count = len(candidates)
        if count == 0:
            # Nothing to score: no user-feature read, no inference (Triton refuses batch 0).
            empty = np.empty((0, len(self.feature_names)), dtype=np.float32)
            return candidates.with_columns(**{SCORE: np.empty(0), MODEL_INPUTS: empty})
        matrix = self._features(request, candidates)
        if not self._rank.model_name:
            # Recall order as a score in (0, 1], so top_n keeps it.
            order_score = (count - np.arange(count, dtype=np.float64)) / count
            return candidates.with_columns(**{SCORE: order_score, MODEL_INPUTS: matrix})
        score = self._infer(matrix)
        return candidates.with_columns(
            **{
                SCORE: score,
                MODEL_INPUTS: matrix,
                MODEL_OUTPUT_PREFIX + self._rank.score_output: score,
            }
        )

    def _features(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        user = self._user_values(request.user_id) if self._user_refs else {}
        items = self._item_values(candidates.item_ids.tolist())
        try:
            return self._generator.generate(user, items, num_items=len(candidates))
        except FeatureValueError as exc:
            raise FailedPrecondition(
                f"scene {self._scene_id!r}: {exc}", reason="FEATURE_NOT_NUMERIC"
            ) from None

    def _user_values(self, user_id: str) -> dict[str, Any]:
        key = USER_KEY_PARSERS[self._user_key_type](user_id)
        return self._deps.user_features.read(
            self._project, self._user_refs, key, self._user_key_type
        )

    def _item_values(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}
        for view in self.item_views:
            table = self._deps.items.table(self._project, view)
            rows = table.rows(item_ids)
            for source in self._item_sources:
                if source.view == view:
                    values[source.ref] = table.column(source.feature, rows)
        return values

    def _infer(self, matrix: np.ndarray) -> np.ndarray:
        model, output = self._rank.model_name, self._rank.score_output
        try:
            outputs = self._deps.model_server.infer(
                model, {MODEL_INPUT: matrix}, [output], version=self._rank.model_version
            )
        except (InvalidArgument, NotFound) as exc:
            # The request is fine; the scene names a model that is missing or does not take
            # these features.
            raise FailedPrecondition(
                f"scene {self._scene_id!r}: rank model {model!r} cannot score its "
                f"{matrix.shape[1]} rank.features: {exc.message}",
                reason="RANK_MODEL_MISMATCH",
            ) from None
        scores = np.asarray(outputs[output], dtype=np.float64).reshape(len(matrix), -1)
        if scores.shape[1] != 1:
            raise DomainError(
                f"model {model!r} output {output!r} has {scores.shape[1]} values per item; a "
                "score output needs one",
                reason="RANK_OUTPUT_SHAPE",
            )
        return scores[:, 0]


def build(_settings: StageSettings, context: BuildContext) -> ModelRank:
    scene, definitions = context.scene, context.deps.definitions
    sources = [
        _resolve(context.scene_id, scene, definitions, index, ref)
        for index, ref in enumerate(scene.rank.features)
    ]
    key_type = VT.VALUE_TYPE_STRING
    if any(source.side == USER for source in sources):
        key_type = _lookup(
            context.scene_id,
            f"user_entity {scene.user_entity!r}",
            lambda: definitions.entity(scene.project, scene.user_entity),
        ).key_type
    return ModelRank(context.scene_id, scene, sources, key_type, context.deps)


def _resolve(
    scene_id: str, scene: scene_pb2.Scene, definitions: Definitions, index: int, ref: str
) -> FeatureSource:
    where = f"rank.features[{index}] {ref!r}"
    view_id, _, feature = ref.partition(":")
    view = _lookup(scene_id, where, lambda: definitions.feature_view(scene.project, view_id))
    sides = {scene.user_entity: USER, scene.item_entity: ITEM}
    side = sides.get(view.entity)
    if side is None:
        raise _misconfigured(
            scene_id,
            f"{where}: view {view_id!r} describes entity {view.entity!r}, neither the user "
            f"entity {scene.user_entity!r} nor the item entity {scene.item_entity!r}",
        )
    schema = _lookup(scene_id, where, lambda: definitions.view_schema(scene.project, view_id))
    field = schema.feature(feature)
    if field is None:
        raise _misconfigured(scene_id, f"{where}: view {view_id!r} has no feature {feature!r}")
    if field.value_type not in NUMERIC_TYPES:
        raise _misconfigured(
            scene_id,
            f"{where} is {type_name(field.value_type)}; raw model features must be numeric",
        )
    return FeatureSource(ref, side, view_id, feature)


def _lookup(scene_id: str, where: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except NotFound as exc:
        raise _misconfigured(scene_id, f"{where}: {exc.message}") from None


def _misconfigured(scene_id: str, message: str) -> FailedPrecondition:
    return FailedPrecondition(f"scene {scene_id!r}: {message}", reason="SCENE_MISCONFIGURED")


def _generator(scene_id: str, sources: Sequence[FeatureSource]) -> FeatureGenerator:
    config = {
        "features": [
            {
                "feature_type": "raw_feature",
                "feature_name": source.ref,
                "expression": f"{source.side}:{source.ref}",
            }
            for source in sources
        ]
    }
    try:
        return FeatureGenerator.from_config(config)
    except FeatureConfigError as exc:
        raise _misconfigured(scene_id, str(exc)) from None


STAGE = StageType(
    StageKind.RANK,
    RANK_TYPE,
    build,
    needs=frozenset({ITEM_ID}),
    produces=frozenset({SCORE, MODEL_INPUTS}),
)
