"""Checks of resource contents that need no storage; each failure names the field."""

from __future__ import annotations

import math

from google.protobuf.duration_pb2 import Duration
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_pb2,
)

from services.registry.kinds import ID_PATTERN
from shared.errors import InvalidArgument, quoted
from shared.values import KEY_TYPES, TYPES, VT

FeatureView = feature_view_pb2.FeatureView
EmbeddingModel = embedding_model_pb2.EmbeddingModel
# Triton's tensor types (model_config.proto DataType) a config.pbtxt can declare.
TRITON_DATA_TYPES = frozenset(
    {"TYPE_BOOL", "TYPE_STRING", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_BF16"}
    | {f"TYPE_{sign}INT{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)}
)
MAX_TENSORS = 1024


def validate_entity(entity: entity_pb2.Entity) -> None:
    _require_identifier(entity.join_key, "entity.join_key")
    if entity.key_type not in KEY_TYPES:
        raise InvalidArgument("entity.key_type", "must be VALUE_TYPE_INT64 or VALUE_TYPE_STRING")


def validate_data_source(source: data_source_pb2.DataSource) -> None:
    kind = source.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("data_source", "set exactly one of file, postgres or push")
    if kind == "file":
        if not source.file.path:
            raise InvalidArgument("data_source.file.path", "is required")
        if source.file.format == data_source_pb2.FileSource.FORMAT_UNSPECIFIED:
            raise InvalidArgument("data_source.file.format", "must be FORMAT_PARQUET or FORMAT_CSV")
    if kind == "postgres" and bool(source.postgres.table) == bool(source.postgres.query):
        raise InvalidArgument("data_source.postgres", "set exactly one of table and query")
    if kind in ("file", "postgres"):
        _require_identifier(source.event_timestamp_column, "data_source.event_timestamp_column")
    if kind == "push":
        _validate_fields(source.push.schema, "data_source.push.schema")


def validate_feature_view(view: FeatureView, join_key: str, key_type: int) -> None:
    if view.type == FeatureView.TYPE_UNSPECIFIED:
        raise InvalidArgument("feature_view.type", "must be TYPE_BATCH or TYPE_REAL_TIME")
    if view.type == FeatureView.TYPE_BATCH and not view.source:
        raise InvalidArgument("feature_view.source", "is required for a TYPE_BATCH view")
    if view.ttl.seconds < 0 or view.ttl.nanos < 0:
        raise InvalidArgument("feature_view.ttl", "must not be negative")
    _validate_fields(view.fields, "feature_view.fields")
    keys = [field for field in view.fields if field.name == join_key]
    if not keys:
        raise InvalidArgument(
            "feature_view.fields", f"must include the entity's join key {quoted(join_key)}"
        )
    if keys[0].value_type != key_type:
        raise InvalidArgument(
            f"feature_view.fields.{join_key}",
            f"join key type must be the entity's {VT.Name(key_type)}",
        )
    if len(view.fields) < 2:
        raise InvalidArgument("feature_view.fields", "declare at least one feature besides the key")


def validate_embedding_model(model: EmbeddingModel) -> None:
    if model.model_type == EmbeddingModel.MODEL_TYPE_UNSPECIFIED:
        raise InvalidArgument("embedding_model.model_type", "must be MODEL_TYPE_TEXT_EMBEDDING")
    if model.provider == EmbeddingModel.PROVIDER_UNSPECIFIED:
        raise InvalidArgument(
            "embedding_model.provider", "must be PROVIDER_TRITON or PROVIDER_OPENAI_COMPATIBLE"
        )
    if not model.model_name:
        raise InvalidArgument("embedding_model.model_name", "is required")
    _check_range(model.dimension, 1, 16384, "embedding_model.dimension")
    _check_range(model.max_input_tokens, 1, 1_000_000, "embedding_model.max_input_tokens")
    _check_range(model.batch_size, 1, 2048, "embedding_model.batch_size")
    _check_range(model.concurrency, 1, 256, "embedding_model.concurrency")
    _check_range(model.max_retries, 0, 20, "embedding_model.max_retries")
    _check_duration(model.initial_backoff, 0.01, 60.0, "embedding_model.initial_backoff")
    _check_duration(model.call_timeout, 0.1, 600.0, "embedding_model.call_timeout")


def apply_embedding_model_defaults(model: EmbeddingModel) -> None:
    model.dimension = model.dimension or 1024
    model.max_input_tokens = model.max_input_tokens or 8192
    model.batch_size = model.batch_size or 10
    model.concurrency = model.concurrency or 30
    if not model.HasField("max_retries"):
        model.max_retries = 5
    if not model.HasField("initial_backoff"):
        model.initial_backoff.FromMilliseconds(500)
    if not model.HasField("call_timeout"):
        model.call_timeout.FromSeconds(30)


def validate_model_version(version: model_pb2.ModelVersion) -> None:
    """The version's own fields; the FG config and feature set need storage (models.py)."""
    validate_signature(version.signature, "model_version.signature")
    validate_metrics(version.metrics, "model_version.metrics")
    window = version.training_window
    if version.HasField("training_window") and (
        window.end_time.ToDatetime() <= window.start_time.ToDatetime()
    ):
        raise InvalidArgument("model_version.training_window.end_time", "must be after start_time")
    if version.trainer and not ID_PATTERN.fullmatch(version.trainer):
        raise InvalidArgument(
            "model_version.trainer", f"{version.trainer!r} must match {ID_PATTERN.pattern}"
        )


def validate_signature(signature: model_pb2.ModelSignature, path: str) -> None:
    for side in ("inputs", "outputs"):
        tensors = getattr(signature, side)
        if not tensors:
            raise InvalidArgument(f"{path}.{side}", "declare at least one tensor")
        if len(tensors) > MAX_TENSORS:
            raise InvalidArgument(f"{path}.{side}", f"at most {MAX_TENSORS} tensors")
        seen: set[str] = set()
        for index, tensor in enumerate(tensors):
            _validate_tensor(tensor, f"{path}.{side}[{index}]", seen)


def _validate_tensor(tensor: model_pb2.TensorSpec, path: str, seen: set[str]) -> None:
    if not tensor.name:
        raise InvalidArgument(f"{path}.name", "is required")
    if tensor.name in seen:
        raise InvalidArgument(f"{path}.name", f"duplicate tensor name {tensor.name!r}")
    seen.add(tensor.name)
    if tensor.data_type not in TRITON_DATA_TYPES:
        raise InvalidArgument(
            f"{path}.data_type",
            f"{tensor.data_type!r} is not a Triton data type; use one of "
            f"{', '.join(sorted(TRITON_DATA_TYPES))}",
        )
    if not tensor.dims:
        raise InvalidArgument(f"{path}.dims", "declare the shape without the batch dim, e.g. [1]")
    if any(dim == 0 or dim < -1 for dim in tensor.dims):
        raise InvalidArgument(f"{path}.dims", "each dim must be positive, or -1 for variable")


def validate_metrics(metrics: dict[str, float], path: str) -> None:
    for key, value in metrics.items():
        if not key:
            raise InvalidArgument(path, "metric names must not be empty")
        if not math.isfinite(value):
            raise InvalidArgument(f"{path}.{key}", f"{value} is not a finite number")


def _validate_fields(fields: list[feature_view_pb2.FeatureField], path: str) -> None:
    if not fields:
        raise InvalidArgument(path, "declare at least one field")
    seen: set[str] = set()
    for index, field in enumerate(fields):
        _require_identifier(field.name, f"{path}[{index}].name")
        if field.name in seen:
            raise InvalidArgument(
                f"{path}[{index}].name", f"duplicate field name {quoted(field.name)}"
            )
        seen.add(field.name)
        if field.value_type not in TYPES:
            raise InvalidArgument(f"{path}[{index}].value_type", "must be a VALUE_TYPE_* value")


def _require_identifier(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(field, f"{quoted(value)} must match {ID_PATTERN.pattern}")


def _check_duration(value: Duration, low: float, high: float, field: str) -> None:
    seconds = value.ToTimedelta().total_seconds()
    if not low <= seconds <= high:
        raise InvalidArgument(field, f"{seconds:g}s is outside {low:g}s..{high:g}s")


def _check_range(value: int, low: int, high: int, field: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"{value} is outside {low}..{high}")
