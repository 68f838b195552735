"""The recommendation pipeline: recall → filter → rank → rerank over a columnar candidate set.

Stages are small units behind one-method Protocols, registered by type name in a
`StageRegistry` and listed per scene (NVIDIA Merlin systems' operators, alibaba/pairec's
recall/filter/sort stages). Each registered type declares the candidate columns it needs and
produces, so a scene whose stages cannot feed each other is rejected when it is saved rather
than when a request reaches it. Every stage run is timed in one histogram labelled by scene,
experiment variant and stage name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from google.protobuf import json_format
from prometheus_client import Histogram
from recstack.recommend.v1 import scene_pb2

from services.recommend.breaker import ModelBreaker
from shared.errors import InvalidArgument
from shared.values import VT

if TYPE_CHECKING:
    from services.recommend.item_cache import ItemTable
    from services.recommend.recall.vector_index import VectorIndexes
    from services.recommend.user_features import UserFeatureReader
    from shared.model_server import ModelServer

STAGE_SECONDS = Histogram(
    "recstack_recommend_stage_seconds",
    "Time spent in one pipeline stage of one request.",
    ["scene", "variant", "stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
# The `variant` label of requests no experiment variant served.
NO_VARIANT = "default"

# Candidate columns the built-in stages exchange.
ITEM_ID = "item_id"
RECALL_SOURCES = "recall_sources"
SCORE = "score"
# Each generated model input `i` is the column `input:i`, each model output `o` is `model:o`.
MODEL_INPUT_PREFIX = "input:"
MODEL_OUTPUT_PREFIX = "model:"


class StageKind(StrEnum):
    RECALL = "recall"
    FILTER = "filter"
    RANK = "rank"
    RERANK = "rerank"


# A scene's `rank` is a RankConfig rather than a StageConfig: it runs the rank type `model`
# under the stage name `rank`.
RANK_TYPE = "model"
RANK_NAME = "rank"


# --- data the stages see -----------------------------------------------------------------


@dataclass(frozen=True)
class StageSettings:
    """One configured stage of a scene: its type, unique name, quota and parameters."""

    type: str
    name: str
    quota: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, config: scene_pb2.StageConfig) -> StageSettings:
        return cls(
            config.type,
            config.name or config.type,
            config.quota,
            json_format.MessageToDict(config.params),
        )


@dataclass(frozen=True)
class StageRequest:
    """What one request asks of every stage.

    `user` holds the values of every user feature (`view:feature`) a stage of the pipeline
    declared in `user_refs`, read once per request before the first stage runs (None where the
    user has no value); `user_key` is the user id typed as the user entity's key.
    """

    scene_id: str
    project: str
    user_id: str
    context: Mapping[str, Any]
    size: int
    user: Mapping[str, Any] = field(default_factory=dict)
    user_key: Any = None
    # Keep the generated model inputs as candidate columns (Score's debug output); off, they
    # are not carried through the stages after rank.
    keep_model_inputs: bool = False
    # The pipeline's timer while it runs the request; None outside a pipeline.
    timer: _Timer | None = field(default=None, compare=False, repr=False)

    def timed(self, part: str) -> AbstractContextManager[None]:
        """Times a part of the stage that is running, reported as `<stage>.<part>` beside
        the stage's own time (which includes it), e.g. `rank.fg`."""
        return self.timer.part(part) if self.timer is not None else nullcontext()


@dataclass(frozen=True)
class Candidates:
    """Items in pipeline order, with named columns of one entry per item (the first axis)."""

    item_ids: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    # Why the candidates are not ranked by the scene's model (set by a rank stage that could
    # not reach it); empty when they are.
    degraded: str = ""

    @classmethod
    def of(cls, item_ids: Sequence[str], **columns: np.ndarray) -> Candidates:
        return cls(np.asarray(item_ids, dtype=str), columns)

    def __len__(self) -> int:
        return len(self.item_ids)

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates at `index` (integer positions or a boolean mask), in that order."""
        columns = {name: column[index] for name, column in self.columns.items()}
        return replace(self, item_ids=self.item_ids[index], columns=columns)

    def with_columns(self, **columns: np.ndarray) -> Candidates:
        return replace(self, columns={**self.columns, **columns})

    def model_outputs(self) -> dict[str, np.ndarray]:
        return self._prefixed(MODEL_OUTPUT_PREFIX)

    def model_inputs(self) -> dict[str, np.ndarray]:
        """The generated model inputs, [items, *dims] each, in generation order."""
        return self._prefixed(MODEL_INPUT_PREFIX)

    def _prefixed(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            name.removeprefix(prefix): column
            for name, column in self.columns.items()
            if name.startswith(prefix)
        }


# --- stage protocols: one method each -------------------------------------------------------


class RecallStage(Protocol):
    def recall(self, request: StageRequest) -> Sequence[str]:
        """Item ids in preference order; the pipeline keeps at most the stage's quota."""
        ...


class FilterStage(Protocol):
    def keep(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        """A boolean mask of the candidates to keep."""
        ...


class RankStage(Protocol):
    @property
    def item_views(self) -> tuple[str, ...]:
        """Item feature views the stage reads, for warming the item cache."""
        ...

    def rank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        """The candidates, in the same order, with the `score` column, and the generated
        model inputs and model outputs as prefixed columns."""
        ...


class RerankStage(Protocol):
    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates: ...


@runtime_checkable
class ReadsUserFeatures(Protocol):
    """A stage of any kind that reads the user's features: it lists them, and the pipeline
    reads every stage's in one call per request (`StageRequest.user`)."""

    @property
    def user_refs(self) -> tuple[str, ...]: ...


# --- what stage factories get -----------------------------------------------------------


class ItemSource(Protocol):
    """Item features by feature view, held in memory (the item cache)."""

    def table(self, project: str, view_id: str) -> ItemTable: ...

    def lookup(
        self, project: str, view_id: str, item_ids: Sequence[str]
    ) -> tuple[ItemTable, np.ndarray]:
        """The table and each item's row in it (-1: none), cold items read in first."""
        ...

    def values(
        self, project: str, view_id: str, feature: str, item_ids: Sequence[str]
    ) -> np.ndarray:
        """One feature's values for these items, cold items read in first."""
        ...


@dataclass(frozen=True)
class ActiveModel:
    """The ACTIVE version of a registered ranking model, as the rank stage uses it."""

    model: str
    version: int
    # The FG document stored with the version.
    fg_config: Mapping[str, Any]
    # `view:feature` refs of the version's (pinned) model feature set.
    features: tuple[str, ...]
    triton_model: str
    triton_version: str
    # Output tensor names, in signature order.
    outputs: tuple[str, ...]


class Definitions(Protocol):
    """Registry definitions (the cached registry client)."""

    def feature_view(self, project: str, view_id: str, version: int = 0) -> Any: ...
    def view_schema(self, project: str, view_id: str, version: int = 0) -> Any: ...
    def entity(self, project: str, entity_id: str) -> Any: ...

    def model(self, project: str, model_id: str) -> Any:
        """The registered Model; NotFound when it does not exist."""
        ...

    def active_model(self, project: str, model_id: str) -> ActiveModel:
        """NotFound when the model does not exist or has no ACTIVE version."""
        ...


def _vector_indexes() -> VectorIndexes:
    # Imported here: the index module builds on this one (ItemSource).
    from services.recommend.recall.vector_index import VectorIndexes

    return VectorIndexes()


@dataclass(frozen=True)
class StageDeps:
    items: ItemSource
    user_features: UserFeatureReader
    model_server: ModelServer
    definitions: Definitions
    # Shared by every scene's rank stage: one server outage, one backoff.
    model_breaker: ModelBreaker = field(default_factory=ModelBreaker)
    # The vector recalls' indexes, shared by every scene of the service.
    vectors: VectorIndexes = field(default_factory=_vector_indexes)


@dataclass(frozen=True)
class BuildContext:
    """What a stage factory may read: the scene it belongs to and the service's adapters."""

    scene_id: str
    scene: scene_pb2.Scene
    deps: StageDeps


def _no_check(_settings: StageSettings, _path: str) -> None:
    return None


def _no_views(_settings: StageSettings) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class StageType:
    """A registered stage implementation and the candidate columns it needs and produces."""

    kind: StageKind
    name: str
    factory: Callable[[StageSettings, BuildContext], Any]
    needs: frozenset[str] = frozenset()
    produces: frozenset[str] = frozenset()
    # Validates `params` when a scene is saved; raises InvalidArgument under `path`.
    check: Callable[[StageSettings, str], None] = _no_check
    # Item feature views the configured stage reads (for warming the item cache).
    item_views: Callable[[StageSettings], Sequence[str]] = _no_views
    # The `view:feature` refs (user or item) the configured stage reads, checked against the
    # registry when a scene is saved; default: its item views, as `view:` (the view exists).
    references: Callable[[StageSettings], Sequence[str]] | None = None

    def referenced(self, settings: StageSettings) -> list[str]:
        if self.references is not None:
            return list(self.references(settings))
        return [f"{view}:" for view in self.item_views(settings)]


class StageRegistry:
    """Stage types by kind and name; built explicitly, never a global mutable map."""

    def __init__(self, types: Iterable[StageType]) -> None:
        self._types: dict[tuple[StageKind, str], StageType] = {}
        for stage_type in types:
            key = (stage_type.kind, stage_type.name)
            if key in self._types:
                raise ValueError(f"{stage_type.kind} stage {stage_type.name!r} registered twice")
            self._types[key] = stage_type

    def get(self, kind: StageKind, name: str) -> StageType | None:
        return self._types.get((kind, name))

    def names(self, kind: StageKind) -> list[str]:
        return sorted(name for stage_kind, name in self._types if stage_kind == kind)


# --- the runnable pipeline ------------------------------------------------------------------


def _int_key(user_id: str) -> int:
    try:
        key = int(user_id)
    except ValueError:
        key = None
    if key is None or not -(2**63) <= key < 2**63:
        raise InvalidArgument(
            "user_id",
            f"{user_id[:40]!r} is not a 64-bit integer, and the scene's user entity has INT64 keys",
        )
    return key


# How a request's string user id becomes a key of the user entity's key type.
USER_KEY_PARSERS: Mapping[int, Callable[[str], Any]] = {
    VT.VALUE_TYPE_INT64: _int_key,
    VT.VALUE_TYPE_STRING: str,
}
# The timer's name for the one user-feature read of a request.
USER_FEATURES_STAGE = "user_features"


@dataclass(frozen=True)
class UserFeatures:
    """A scene's user features: the request's user id typed as the user entity's key, and
    one read of every ref the stages need."""

    reader: UserFeatureReader
    key_type: Callable[[], int]

    def read(self, project: str, user_id: str, refs: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        key_type = self.key_type()
        key = USER_KEY_PARSERS[key_type](user_id)
        if not refs:
            return key, {}
        return key, self.reader.read(project, list(refs), key, key_type)


@dataclass(frozen=True)
class Named:
    """A built stage with its name in responses and metrics."""

    name: str
    stage: Any
    quota: int = 0


@dataclass(frozen=True)
class PipelineResult:
    candidates: Candidates
    # Candidates left after each stage, by stage name, in run order.
    stage_counts: dict[str, int]
    # Seconds spent in each stage, by stage name, in run order (the user-feature read too).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    recall_names: tuple[str, ...] = ()

    @property
    def empty_reason(self) -> str:
        """Why there are no items: no recall found any, or the first stage that left none."""
        if len(self.candidates):
            return ""
        recalls = set(self.recall_names)
        if not any(self.stage_counts.get(name, 0) for name in recalls):
            return "no recall stage found any item"
        for name, count in self.stage_counts.items():
            if name not in recalls and count == 0:
                return f"every candidate was removed by stage {name!r}"
        return "no candidate remained"


@dataclass(frozen=True)
class Pipeline:
    scene_id: str
    recalls: tuple[Named, ...]
    filters: tuple[Named, ...]
    rank: Named
    reranks: tuple[Named, ...]
    # Item feature views the recall, filter and rerank stages read.
    stage_views: tuple[str, ...] = ()
    # Reads the user's features once per request; None in pipelines without a user entity.
    users: UserFeatures | None = None

    @property
    def item_views(self) -> tuple[str, ...]:
        """Every item feature view the pipeline reads now, for warming the item cache; the
        rank stage's depend on the model version active at the time of the call."""
        return tuple(dict.fromkeys((*self.stage_views, *self.rank.stage.item_views)))

    def run(self, request: StageRequest, variant: str = NO_VARIANT) -> PipelineResult:
        counts: dict[str, int] = {}
        timer = _Timer(self.scene_id, variant)
        request = self._with_user(replace(request, timer=timer), timer)
        candidates = self._recall(request, timer, counts)
        for named in self.filters:
            with timer(named.name):
                candidates = candidates.take(named.stage.keep(request, candidates))
            counts[named.name] = len(candidates)
        candidates = by_score(self._rank(request, candidates, timer))
        counts[self.rank.name] = len(candidates)
        for named in self.reranks:
            with timer(named.name):
                candidates = named.stage.rerank(request, candidates)
            counts[named.name] = len(candidates)
        return PipelineResult(
            candidates.take(np.arange(min(request.size, len(candidates)))),
            counts,
            timer.seconds,
            tuple(named.name for named in self.recalls),
        )

    def score(self, request: StageRequest, item_ids: Sequence[str]) -> Candidates:
        """Only the rank stage, on the given items in the given order (the Score API)."""
        timer = _Timer(self.scene_id, NO_VARIANT)
        request = self._with_user(replace(request, timer=timer), timer, (self.rank,))
        return self._rank(request, Candidates.of(item_ids), timer)

    def _with_user(
        self, request: StageRequest, timer: _Timer, stages: Sequence[Named] | None = None
    ) -> StageRequest:
        """The request with the user's features every stage (or `stages`) reads."""
        named = (
            stages
            if stages is not None
            else (*self.recalls, *self.filters, self.rank, *self.reranks)
        )
        refs = tuple(
            dict.fromkeys(
                ref
                for stage in named
                if isinstance(stage.stage, ReadsUserFeatures)
                for ref in stage.stage.user_refs
            )
        )
        if self.users is None:
            return request
        with timer(USER_FEATURES_STAGE):
            key, values = self.users.read(request.project, request.user_id, refs)
        return replace(request, user=values, user_key=key)

    def _recall(self, request: StageRequest, timer: _Timer, counts: dict[str, int]) -> Candidates:
        # Insertion order is the merge order: recall stages in scene order, each in its own.
        sources: dict[str, list[str]] = {}
        for named in self.recalls:
            with timer(named.name):
                found = list(named.stage.recall(request))[: named.quota]
            counts[named.name] = len(found)
            for item_id in found:
                sources.setdefault(item_id, []).append(named.name)
        recall_sources = np.empty(len(sources), dtype=object)
        recall_sources[:] = [tuple(names) for names in sources.values()]
        return Candidates.of(list(sources), **{RECALL_SOURCES: recall_sources})

    def _rank(self, request: StageRequest, candidates: Candidates, timer: _Timer) -> Candidates:
        with timer(self.rank.name):
            return self.rank.stage.rank(request, candidates)


def by_score(candidates: Candidates) -> Candidates:
    """Best score first, ties by item id; NaN scores last."""
    if SCORE not in candidates.columns:
        return candidates
    keys = -candidates.columns[SCORE]
    # argsort puts NaN after every number; the ids are compared (a string sort, several
    # times slower) only when some scores tie.
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    if (ranked[1:] == ranked[:-1]).any() or np.isnan(ranked[-2:]).all():
        # lexsort sorts by the last key first.
        order = np.lexsort((candidates.item_ids, keys))
    return candidates.take(order)


@dataclass(frozen=True)
class _Timer:
    """Seconds per stage of one request, each also observed in STAGE_SECONDS."""

    scene: str
    variant: str
    seconds: dict[str, float] = field(default_factory=dict)
    # The stages being timed, innermost last (a request runs its stages one at a time).
    _running: list[str] = field(default_factory=list)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        self._running.append(stage)
        try:
            yield
        finally:
            self._running.pop()
            elapsed = time.perf_counter() - started
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
            STAGE_SECONDS.labels(self.scene, self.variant, stage).observe(elapsed)

    def part(self, part: str) -> AbstractContextManager[None]:
        """Times `part` of the running stage as `<stage>.<part>`; outside a stage, `part`."""
        return self(f"{self._running[-1]}.{part}" if self._running else part)
