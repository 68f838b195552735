"""Rank `model`: user, item and context features → the feature generator → a model on Triton.

Two ways to name the model (see `RankConfig`):
- `model`: a registered Model. Each request ranks with the model's ACTIVE version: its FG
  document (the same one training used), bound to the version's feature set, builds one input
  tensor per generated feature; every model output is kept per item. Activating or rolling
  back a version changes ranking at the next request, with no scene change or restart.
- `model_name` + `features` (bare mode): a Triton model taking one FP32 matrix `features`
  of raw numeric `view:feature` values in the given order.
Without either the stage keeps recall order.

User values come from the `UserFeatureReader` (one call per request), item values from the
item cache, context values from the request.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from prometheus_client import Counter
from recstack.recommend.v1 import scene_pb2

from services.recommend.pipeline import (
    ITEM_ID,
    MODEL_INPUT_PREFIX,
    MODEL_OUTPUT_PREFIX,
    RANK_TYPE,
    SCORE,
    ActiveModel,
    BuildContext,
    Candidates,
    Definitions,
    StageDeps,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from services.recommend.rank.formula import parse as parse_formula
from services.recommend.rank.item_side import CandidateItems, SplitGenerator
from shared.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from shared.feature_generator import (
    ITEM,
    USER,
    AvailableFeature,
    FeatureConfigError,
    FeatureGenerator,
    FeatureValueError,
    InputBinding,
    bind_inputs,
)

# The bare-mode contract: one FP32 matrix input [batch, n_features] named `features`.
BARE_INPUT = "features"
# Scorers of model versions seen recently; older ones are rebuilt if they come back.
MAX_SCORERS = 8
# Rows per inference call: the `max_batch_size` that `training.artifacts` gives every version.
MAX_BATCH = 1024
DEGRADED = Counter(
    "recstack_recommend_degraded_total",
    "Responses in recall order because the model server could not rank them.",
    ["scene", "reason"],
)


@dataclass(frozen=True)
class Scorer:
    """One model version made ready to score: its FG bound to feature views, and where its
    tensors go. Built once per version, then shared by every request."""

    generator: FeatureGenerator
    # FG input name → the feature it is read from, per side.
    user_inputs: Mapping[str, AvailableFeature]
    item_inputs: Mapping[str, AvailableFeature]
    triton_model: str
    triton_version: str
    outputs: tuple[str, ...]
    score: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    # Bare mode sends the FG outputs as one matrix.
    bare: bool = False
    # The generator as online ranking runs it: per item row, per distinct value, per request.
    split: SplitGenerator | None = None

    def __post_init__(self) -> None:
        if self.split is None:
            object.__setattr__(
                self, "split", SplitGenerator.split(self.generator, self.item_inputs)
            )

    @property
    def item_views(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(feature.view for feature in self.item_inputs.values()))

    def model_inputs(self, generated: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.bare:
            return {BARE_INPUT: self.generator.matrix(dict(generated))}
        return dict(generated)


class ModelRank:
    def __init__(
        self, scene_id: str, scene: scene_pb2.Scene, deps: StageDeps, bare: Scorer | None
    ) -> None:
        self._scene_id = scene_id
        self._scene = scene
        self._project = scene.project
        self._rank = scene.rank
        self._deps = deps
        self._bare = bare
        self._scorers: dict[tuple[str, int], Scorer] = {}
        self._lock = threading.Lock()
        self._breaker = deps.model_breaker
        self._max_batch = MAX_BATCH

    @property
    def user_refs(self) -> tuple[str, ...]:
        """The user features the current model reads (the pipeline reads them per request)."""
        scorer = self._scorer()
        if scorer is None:
            return ()
        return tuple(dict.fromkeys(f.ref for f in scorer.user_inputs.values() if not f.is_key))

    @property
    def item_views(self) -> tuple[str, ...]:
        """Item feature views the current model reads (for warming the item cache)."""
        scorer = self._scorer()
        return scorer.item_views if scorer is not None else ()

    def rank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        count = len(candidates)
        if count == 0:
            # Nothing to score: no user-feature read, no inference (Triton refuses batch 0).
            return candidates.with_columns(**{SCORE: np.empty(0)})
        scorer = self._scorer()
        if scorer is None:
            return candidates.with_columns(**{SCORE: _recall_order(count)})
        # Timed apart (`rank.fg`, `rank.model`): our own work next to the call we delegate.
        with request.timed("fg"):
            generated = self._generate(scorer, request, candidates)
        columns = (
            {MODEL_INPUT_PREFIX + name: array for name, array in generated.items()}
            if request.keep_model_inputs
            else {}
        )
        if not scorer.triton_model:
            # Bare features without a model: generated (for Score's debug output), unscored.
            return candidates.with_columns(**columns, **{SCORE: _recall_order(count)})
        try:
            with request.timed("model"):
                outputs = self._infer(scorer, scorer.model_inputs(generated), count)
        except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:
            return self._degraded(candidates, columns, exc)
        columns |= {MODEL_OUTPUT_PREFIX + name: column for name, column in outputs.items()}
        return candidates.with_columns(**columns, **{SCORE: scorer.score(outputs)})

    def _degraded(
        self, candidates: Candidates, columns: dict[str, np.ndarray], error: DomainError
    ) -> Candidates:
        """Recall order instead of an error: the user still gets items, the response says
        why they are not ranked, and a metric counts it."""
        DEGRADED.labels(self._scene_id, error.reason).inc()
        ranked = candidates.with_columns(**columns, **{SCORE: _recall_order(len(candidates))})
        return replace(ranked, degraded=f"{error.reason}: {error.message}")

    # --- which model ----------------------------------------------------------------------

    def _scorer(self) -> Scorer | None:
        if not self._rank.model:
            return self._bare
        active = self._active_model()
        key = (active.model, active.version)
        scorer = self._scorers.get(key)
        if scorer is None:
            scorer = _registered_scorer(self._scene_id, self._scene, active, self._deps)
            with self._lock:
                if len(self._scorers) >= MAX_SCORERS:
                    self._scorers.clear()
                self._scorers[key] = scorer
        return scorer

    def _active_model(self) -> ActiveModel:
        try:
            return self._deps.definitions.active_model(self._project, self._rank.model)
        except NotFound as exc:
            raise _misconfigured(
                self._scene_id, f"rank.model {self._rank.model!r}: {exc.message}"
            ) from None

    # --- features -------------------------------------------------------------------------

    def _generate(
        self, scorer: Scorer, request: StageRequest, candidates: Candidates
    ) -> dict[str, np.ndarray]:
        user = {
            name: request.user_key if feature.is_key else request.user.get(feature.ref)
            for name, feature in scorer.user_inputs.items()
        }
        items = CandidateItems(
            candidates.item_ids,
            scorer.item_inputs,
            lambda view, ids: self._deps.items.lookup(self._project, view, ids),
        )
        try:
            return scorer.split.generate(user, request.context, items)
        except FeatureValueError as exc:
            raise FailedPrecondition(
                f"scene {self._scene_id!r}: {exc}", reason="FEATURE_VALUE_INVALID"
            ) from None

    # --- inference ------------------------------------------------------------------------

    def _infer(
        self, scorer: Scorer, inputs: dict[str, np.ndarray], count: int
    ) -> dict[str, np.ndarray]:
        model = scorer.triton_model
        self._breaker.check(model)
        try:
            outputs = _batched(
                lambda part: self._deps.model_server.infer(
                    model, part, list(scorer.outputs), version=scorer.triton_version
                ),
                inputs,
                count,
                self._max_batch,
            )
        except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:
            self._breaker.failed(model, exc.message)
            raise
        except (InvalidArgument, NotFound) as exc:
            # The request is fine; the scene names a model that is missing or does not take
            # these features.
            raise FailedPrecondition(
                f"scene {self._scene_id!r}: rank model {model!r} cannot score the generated "
                f"features {sorted(inputs)}: {exc.message}",
                reason="RANK_MODEL_MISMATCH",
            ) from None
        columns = {}
        for name in scorer.outputs:
            values = np.asarray(outputs[name], dtype=np.float64).reshape(count, -1)
            if values.shape[1] != 1:
                raise DomainError(
                    f"model {model!r} output {name!r} has {values.shape[1]} values per item; "
                    "a ranking output needs one",
                    reason="RANK_OUTPUT_SHAPE",
                )
            columns[name] = values[:, 0]
        self._breaker.succeeded(model)
        return columns


def _batched(
    infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: dict[str, np.ndarray],
    count: int,
    max_batch: int,
) -> dict[str, np.ndarray]:
    """One inference call, or several of at most `max_batch` rows (the model's limit) whose
    outputs are joined in order."""
    if count <= max_batch:
        return dict(infer(inputs))
    parts = [
        infer({name: array[start : start + max_batch] for name, array in inputs.items()})
        for start in range(0, count, max_batch)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _recall_order(count: int) -> np.ndarray:
    """Recall order as a score in (0, 1], so top_n keeps it."""
    return (count - np.arange(count, dtype=np.float64)) / count


# --- building --------------------------------------------------------------------------------


def build(_settings: StageSettings, context: BuildContext) -> ModelRank:
    scene, definitions = context.scene, context.deps.definitions
    scene_id = context.scene_id
    bare = None
    if scene.rank.features or scene.rank.model_name:
        bare = _bare_scorer(scene_id, scene, definitions)

    return ModelRank(scene_id, scene, context.deps, bare)


def _bare_scorer(scene_id: str, scene: scene_pb2.Scene, definitions: Definitions) -> Scorer:
    """The bare-mode scorer: each `view:feature` ref is one `raw_feature` of the matrix."""
    sides = {scene.user_entity: USER, scene.item_entity: ITEM}
    available = []
    config = []
    for index, ref in enumerate(scene.rank.features):
        where = f"rank.features[{index}]"
        found = _available(scene_id, scene.project, ref, definitions, where)
        if found is None:
            raise _misconfigured(scene_id, f"{where} {ref!r} is the view's join key, not a feature")
        side = sides.get(found.entity)
        if side is None:
            raise _misconfigured(
                scene_id,
                f"rank.features[{index}] {ref!r}: view {found.view!r} describes entity "
                f"{found.entity!r}, neither the user entity {scene.user_entity!r} nor the item "
                f"entity {scene.item_entity!r}",
            )
        available.append(found)
        config.append(
            {"feature_type": "raw_feature", "feature_name": ref, "expression": f"{side}:{ref}"}
        )
    generator = _generator(scene_id, {"features": config}, "rank.features")
    binding = _bind(scene_id, generator, available, scene, definitions, "rank.features")
    return Scorer(
        generator,
        binding.side(USER),
        binding.side(ITEM),
        scene.rank.model_name,
        scene.rank.model_version,
        (scene.rank.score_output,) if scene.rank.model_name else (),
        _score(scene_id, scene.rank, (scene.rank.score_output,), "rank.model_name"),
        bare=True,
    )


def _registered_scorer(
    scene_id: str, scene: scene_pb2.Scene, active: ActiveModel, deps: StageDeps
) -> Scorer:
    where = f"rank.model {active.model!r} version {active.version}"
    generator = _generator(scene_id, active.fg_config, where)
    available = [
        found
        for ref in active.features
        if (found := _available(scene_id, scene.project, ref, deps.definitions, where))
    ]
    binding = _bind(scene_id, generator, available, scene, deps.definitions, where)
    return Scorer(
        generator,
        binding.side(USER),
        binding.side(ITEM),
        active.triton_model,
        active.triton_version,
        active.outputs,
        _score(scene_id, scene.rank, active.outputs, where),
    )


def _score(
    scene_id: str, rank: scene_pb2.RankConfig, outputs: Sequence[str], where: str
) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """The score of the model's outputs: the scene's formula, else one output (the model's
    first by default); names the model lacks are a misconfigured scene."""
    if rank.score_formula:
        formula = parse_formula(rank.score_formula)
        unknown = sorted(formula.names - set(outputs))
        if unknown:
            raise _misconfigured(
                scene_id,
                f"rank.score_formula names {unknown}, which are not outputs of {where}: it has "
                f"{list(outputs)}",
            )
        return formula
    name = rank.score_output or (outputs[0] if outputs else "")
    if outputs and name not in outputs:
        raise _misconfigured(
            scene_id,
            f"rank.score_output {name!r} is not an output of {where}: it has {list(outputs)}",
        )
    return operator.itemgetter(name)


def _available(
    scene_id: str, project: str, ref: str, definitions: Definitions, where: str
) -> AvailableFeature | None:
    """The feature a ref names; None for a view's join key (`view:*` pins it too), which is
    the entity key input instead."""
    view_id, _, feature = ref.partition(":")
    view = _lookup(scene_id, where, lambda: definitions.feature_view(project, view_id))
    schema = _lookup(scene_id, where, lambda: definitions.view_schema(project, view_id))
    if feature == schema.join_key:
        return None
    field = schema.feature(feature)
    if field is None:
        raise _misconfigured(scene_id, f"{where}: view {view_id!r} has no feature {feature!r}")
    return AvailableFeature(view_id, feature, view.entity, field.value_type)


def _generator(scene_id: str, config: Mapping[str, Any], where: str) -> FeatureGenerator:
    try:
        return FeatureGenerator.from_config(config)
    except FeatureConfigError as exc:
        raise _misconfigured(scene_id, f"{where}: FG config {exc}") from None


def _bind(
    scene_id: str,
    generator: FeatureGenerator,
    available: Sequence[AvailableFeature],
    scene: scene_pb2.Scene,
    definitions: Definitions,
    where: str,
) -> InputBinding:
    keys = [
        AvailableFeature.key(entity.join_key, entity_id, entity.key_type)
        for entity_id in (scene.user_entity, scene.item_entity)
        for entity in [
            _lookup(scene_id, where, lambda e=entity_id: definitions.entity(scene.project, e))
        ]
    ]
    try:
        return bind_inputs(
            generator,
            available,
            user_entity=scene.user_entity,
            item_entity=scene.item_entity,
            keys=keys,
        )
    except FeatureConfigError as exc:
        raise _misconfigured(scene_id, f"{where}: {exc}") from None


def _lookup(scene_id: str, where: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except NotFound as exc:
        raise _misconfigured(scene_id, f"{where}: {exc.message}") from None


def _misconfigured(scene_id: str, message: str) -> FailedPrecondition:
    return FailedPrecondition(f"scene {scene_id!r}: {message}", reason="SCENE_MISCONFIGURED")


STAGE = StageType(
    StageKind.RANK,
    RANK_TYPE,
    build,
    needs=frozenset({ITEM_ID}),
    produces=frozenset({SCORE}),
)
