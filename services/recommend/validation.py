"""Checks of scenes and experiments that need no storage and no other service.

Run when a resource is created or updated (and on every scene an experiment variant
produces), so a stored scene always names registered stages that can feed each other. What
needs the registry (do the referenced views exist, are the features numeric) is checked when
the pipeline is built for a request.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from recstack.recommend.v1 import experiment_pb2, scene_pb2

from services.recommend.pipeline import (
    ITEM_ID,
    RANK_NAME,
    RANK_TYPE,
    RECALL_SOURCES,
    StageKind,
    StageRegistry,
    StageSettings,
    StageType,
)
from services.recommend.rank.formula import FormulaError
from services.recommend.rank.formula import parse as parse_formula
from shared.errors import InvalidArgument

# `\Z`, not `$`: `$` also matches before a trailing newline.
ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
FEATURE_REF = re.compile(r"^[a-z][a-z0-9_]{0,62}:[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
DEFAULT_TOP_N = 20
MAX_TOP_N = 500
MAX_RECALL_QUOTA = 10_000
DEFAULT_BUCKET_COUNT = 100
MAX_BUCKET_COUNT = 10_000


def check_id(resource_id: str, field: str) -> None:
    if not ID_PATTERN.match(resource_id):
        raise InvalidArgument(
            field,
            f"{resource_id!r} is not a valid id: use 1-63 characters of a-z, 0-9 and _, "
            "starting with a letter",
        )


# --- scenes ---------------------------------------------------------------------------------


def apply_scene_defaults(scene: scene_pb2.Scene) -> None:
    """Fill what the contract documents as defaults, so reads show the effective values."""
    if scene.top_n == 0:
        scene.top_n = DEFAULT_TOP_N
    for config in (*scene.recalls, *scene.filters, *scene.reranks):
        if not config.name:
            config.name = config.type


def validate_scene(scene: scene_pb2.Scene, stages: StageRegistry, path: str = "scene") -> None:
    for field in ("project", "user_entity", "item_entity"):
        check_id(getattr(scene, field), f"{path}.{field}")
    if not scene.recalls:
        raise InvalidArgument(f"{path}.recalls", "list at least one recall stage")
    if not 1 <= scene.top_n <= MAX_TOP_N:
        raise InvalidArgument(f"{path}.top_n", f"must be 1..{MAX_TOP_N}, got {scene.top_n}")
    configured = configured_stages(scene, stages, path)
    _check_unique_names(configured)
    for config_path, settings, stage_type in configured:
        stage_type.check(settings, config_path)
    for index, config in enumerate(scene.recalls):
        if not 0 < config.quota <= MAX_RECALL_QUOTA:
            raise InvalidArgument(
                f"{path}.recalls[{index}].quota",
                f"must be 1..{MAX_RECALL_QUOTA}, got {config.quota}",
            )
    _validate_rank(scene.rank, f"{path}.rank")
    _check_columns(configured)


def configured_stages(
    scene: scene_pb2.Scene, stages: StageRegistry, path: str = "scene"
) -> list[tuple[str, StageSettings, StageType]]:
    """Every configured stage in run order, with its path and registered type (rank
    included); INVALID_ARGUMENT for a type that is not registered."""
    return list(_stage_types(scene, stages, path))


def _stage_types(
    scene: scene_pb2.Scene, stages: StageRegistry, path: str
) -> Iterable[tuple[str, StageSettings, StageType]]:
    groups = (
        ("recalls", StageKind.RECALL, scene.recalls),
        ("filters", StageKind.FILTER, scene.filters),
    )
    for field, kind, configs in groups:
        yield from _resolve(field, kind, configs, stages, path)
    rank_type = stages.get(StageKind.RANK, RANK_TYPE)
    if rank_type is None:
        raise InvalidArgument(f"{path}.rank", f"no rank stage type {RANK_TYPE!r} is registered")
    yield f"{path}.rank", StageSettings(RANK_TYPE, RANK_NAME), rank_type
    yield from _resolve("reranks", StageKind.RERANK, scene.reranks, stages, path)


def _resolve(
    field: str,
    kind: StageKind,
    configs: Iterable[scene_pb2.StageConfig],
    stages: StageRegistry,
    path: str,
) -> Iterable[tuple[str, StageSettings, StageType]]:
    for index, config in enumerate(configs):
        config_path = f"{path}.{field}[{index}]"
        stage_type = stages.get(kind, config.type)
        if stage_type is None:
            raise InvalidArgument(
                f"{config_path}.type",
                f"{config.type!r} is not a registered {kind} stage; use one of "
                f"{stages.names(kind)}",
            )
        yield config_path, StageSettings.from_proto(config), stage_type


def _check_unique_names(configured: list[tuple[str, StageSettings, StageType]]) -> None:
    seen: set[str] = set()
    for config_path, settings, _ in configured:
        if settings.name in seen:
            raise InvalidArgument(
                f"{config_path}.name",
                f"stage name {settings.name!r} is used twice (the rank stage is {RANK_NAME!r}); "
                "stage names label responses and metrics, so they must be unique",
            )
        seen.add(settings.name)


def _check_columns(configured: list[tuple[str, StageSettings, StageType]]) -> None:
    """Each stage may need only columns that earlier stages produce."""
    recalls = [stage_type for _, _, stage_type in configured if stage_type.kind == StageKind.RECALL]
    # Recall stages run side by side; their merge yields item ids and which recalls found each.
    available = {ITEM_ID, RECALL_SOURCES}.union(*(stage_type.produces for stage_type in recalls))
    for config_path, settings, stage_type in configured:
        missing = stage_type.needs - (set() if stage_type.kind == StageKind.RECALL else available)
        if missing:
            raise InvalidArgument(
                f"{config_path}.type",
                f"{stage_type.kind} stage {settings.name!r} needs columns {sorted(missing)} that "
                "no earlier stage produces; reorder the stages or add one that produces them",
            )
        available |= stage_type.produces


def _validate_rank(rank: scene_pb2.RankConfig, path: str) -> None:
    if rank.score_formula:
        if not rank.model:
            raise InvalidArgument(
                f"{path}.score_formula",
                "needs a registered `model`: its outputs are the formula's names",
            )
        if rank.score_output:
            raise InvalidArgument(
                f"{path}.score_output", "set score_output or score_formula, not both"
            )
        try:
            parse_formula(rank.score_formula)
        except FormulaError as exc:
            raise InvalidArgument(f"{path}.score_formula", str(exc)) from None
    if rank.model:
        check_id(rank.model, f"{path}.model")
        for bare in ("model_name", "model_version", "features"):
            if getattr(rank, bare):
                raise InvalidArgument(
                    f"{path}.{bare}",
                    "is for a bare Triton model; a registered `model` brings its own Triton "
                    "model, version and features (from its active version)",
                )
        return
    for index, ref in enumerate(rank.features):
        if not FEATURE_REF.match(ref):
            raise InvalidArgument(f"{path}.features[{index}]", f"{ref!r} is not `view:feature`")
    duplicates = sorted({ref for ref in rank.features if list(rank.features).count(ref) > 1})
    if duplicates:
        raise InvalidArgument(f"{path}.features", f"list each feature once, got {duplicates} twice")
    if rank.model_name and not (rank.score_output or rank.score_formula):
        raise InvalidArgument(
            f"{path}.score_output", "is required with a model_name, e.g. 'probs_ctr'"
        )
    if rank.model_version and not rank.model_version.isdigit():
        raise InvalidArgument(f"{path}.model_version", "must be a positive integer or empty")


# --- experiments ----------------------------------------------------------------------------


def apply_experiment_defaults(experiment: experiment_pb2.Experiment, experiment_id: str) -> None:
    if experiment.bucket_count == 0:
        experiment.bucket_count = DEFAULT_BUCKET_COUNT
    if not experiment.salt:
        # Experiments of one layer share a salt, so they split the same hash of the traffic.
        experiment.salt = experiment.layer or experiment_id


def validate_experiment(experiment: experiment_pb2.Experiment, path: str = "experiment") -> None:
    check_id(experiment.scene, f"{path}.scene")
    if experiment.layer:
        check_id(experiment.layer, f"{path}.layer")
    if not 1 <= experiment.bucket_count <= MAX_BUCKET_COUNT:
        raise InvalidArgument(
            f"{path}.bucket_count",
            f"must be 1..{MAX_BUCKET_COUNT}, got {experiment.bucket_count}",
        )
    if not experiment.variants:
        raise InvalidArgument(f"{path}.variants", "list at least one variant")
    names: set[str] = set()
    for index, variant in enumerate(experiment.variants):
        variant_path = f"{path}.variants[{index}]"
        check_id(variant.name, f"{variant_path}.name")
        if variant.name in names:
            raise InvalidArgument(f"{variant_path}.name", f"{variant.name!r} is used twice")
        names.add(variant.name)
        _check_range(variant, experiment.bucket_count, variant_path)
    _check_no_overlap(experiment, path)


def _check_range(variant: experiment_pb2.Variant, bucket_count: int, path: str) -> None:
    if not 0 <= variant.bucket_start < variant.bucket_end <= bucket_count:
        raise InvalidArgument(
            path,
            f"[bucket_start, bucket_end) = [{variant.bucket_start}, {variant.bucket_end}) must "
            f"be a non-empty range within [0, {bucket_count})",
        )


def _check_no_overlap(experiment: experiment_pb2.Experiment, path: str) -> None:
    ordered = sorted(enumerate(experiment.variants), key=lambda pair: pair[1].bucket_start)
    for (_, previous), (index, variant) in itertools.pairwise(ordered):
        if variant.bucket_start < previous.bucket_end:
            raise InvalidArgument(
                f"{path}.variants[{index}]",
                f"buckets overlap variant {previous.name!r}: a user must see one variant",
            )
