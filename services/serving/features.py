"""Online feature reads and writes, validated against registry definitions.

Knows nothing of gRPC: the servicer hands in plain values and gets plain columns back.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.errors import InvalidArgument
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore, WriteResult
from shared.values import proto_kind, type_name

MAX_KEYS = 1000
MAX_WRITE_ROWS = 10_000


class Status(enum.IntEnum):
    PRESENT = 1
    NOT_FOUND = 2
    OUTSIDE_TTL = 3


class Definitions(Protocol):
    """Where feature definitions come from (the cached registry client)."""

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...
    def model_feature_set(self, project: str, set_id: str) -> Any: ...


@dataclass(frozen=True)
class FeatureRef:
    view: str
    version: int
    feature: str

    @classmethod
    def parse(cls, text: str, field: str) -> FeatureRef:
        view_part, separator, feature = text.partition(":")
        view, _, version = view_part.partition("@")
        if not separator or not view or not feature or (version and not version.isdigit()):
            raise InvalidArgument(field, f"{text!r} is not `view:feature`, `view:*` or `view@N:f`")
        return cls(view, int(version or 0), feature)


@dataclass(frozen=True)
class FeatureColumn:
    name: str
    value_type: int
    values: list[Any]
    statuses: list[Status]
    event_times: list[datetime | None]


@dataclass(frozen=True)
class TypedValue:
    """A value as it arrived: the Python value and the `Value` arm that carried it."""

    value: Any
    kind: str | None


@dataclass(frozen=True)
class RowInput:
    values: dict[str, TypedValue]
    event_time: datetime | None


class FeatureServer:
    def __init__(self, store: OnlineStore, definitions: Definitions) -> None:
        self._store = store
        self._definitions = definitions

    def get_online_features(
        self,
        project: str,
        refs: Sequence[str],
        feature_set: str,
        keys: Sequence[TypedValue],
        now: datetime | None = None,
    ) -> list[FeatureColumn]:
        _require(project, "project")
        requests = self._resolve(project, refs, feature_set)
        key_values = _check_keys(keys, requests[0][0])
        columns = self._store.read(requests, key_values)
        now = now or datetime.now(UTC)
        result: list[FeatureColumn] = []
        for (view, features), view_columns in zip(requests, columns, strict=True):
            statuses = _statuses(view, view_columns.event_times, now)
            for feature in features:
                schema = view.feature(feature)
                assert schema is not None
                result.append(
                    FeatureColumn(
                        f"{view.name}:{feature}",
                        schema.value_type,
                        view_columns.values[feature],
                        statuses,
                        view_columns.event_times,
                    )
                )
        return result

    def write(
        self, project: str, view_id: str, version: int, rows: Sequence[RowInput]
    ) -> WriteResult:
        _require(project, "project")
        _require(view_id, "feature_view")
        if not rows:
            raise InvalidArgument("rows", "send at least one row")
        if len(rows) > MAX_WRITE_ROWS:
            raise InvalidArgument("rows", f"at most {MAX_WRITE_ROWS} rows per batch")
        view = self._definitions.view_schema(project, view_id, version)
        converted = [_row_tuple(view, row, f"rows[{index}]") for index, row in enumerate(rows)]
        return self._store.write(view, converted)

    def _resolve(
        self, project: str, refs: Sequence[str], feature_set: str
    ) -> list[tuple[ViewSchema, list[str]]]:
        if bool(refs) == bool(feature_set):
            raise InvalidArgument("features", "set exactly one of features and model_feature_set")
        parsed = (
            [FeatureRef.parse(text, f"features[{i}]") for i, text in enumerate(refs)]
            if refs
            else self._feature_set_refs(project, feature_set)
        )
        by_view: dict[tuple[str, int], list[str]] = {}
        for ref in parsed:
            by_view.setdefault((ref.view, ref.version), []).append(ref.feature)
        requests = []
        for (view_id, version), features in by_view.items():
            view = self._definitions.view_schema(project, view_id, version)
            requests.append((view, _expand(view, features)))
        entities = {(view.join_key, view.key_type) for view, _ in requests}
        if len(entities) > 1:
            raise InvalidArgument("features", "all feature views of one call must share an entity")
        return requests

    def _feature_set_refs(self, project: str, set_id: str) -> list[FeatureRef]:
        feature_set = self._definitions.model_feature_set(project, set_id)
        return [
            FeatureRef(ref.feature_view, ref.version, ref.feature)
            for ref in feature_set.resolved_features
        ]


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")


def _expand(view: ViewSchema, features: list[str]) -> list[str]:
    if "*" in features:
        return [feature.name for feature in view.features]
    for feature in features:
        if view.feature(feature) is None:
            raise InvalidArgument(
                "features", f"feature view {view.name!r} v{view.version} has no feature {feature!r}"
            )
    return list(dict.fromkeys(features))


def _check_keys(keys: Sequence[TypedValue], view: ViewSchema) -> list[Any]:
    if not keys:
        raise InvalidArgument("entity_keys", "send at least one entity key")
    if len(keys) > MAX_KEYS:
        raise InvalidArgument("entity_keys", f"at most {MAX_KEYS} keys per call, got {len(keys)}")
    expected = proto_kind(view.key_type)
    for index, key in enumerate(keys):
        if key.kind != expected:
            raise InvalidArgument(
                f"entity_keys[{index}]",
                f"{view.join_key} is {type_name(view.key_type)}; send it as {expected}",
            )
    return [key.value for key in keys]


def _statuses(view: ViewSchema, event_times: list[datetime | None], now: datetime) -> list[Status]:
    ttl = view.ttl_seconds
    return [
        Status.NOT_FOUND
        if event_time is None
        else Status.OUTSIDE_TTL
        if ttl and (now - event_time).total_seconds() > ttl
        else Status.PRESENT
        for event_time in event_times
    ]


def _row_tuple(view: ViewSchema, row: RowInput, path: str) -> tuple[Any, ...]:
    if row.event_time is None:
        raise InvalidArgument(f"{path}.event_time", "is required")
    key = row.values.get(view.join_key)
    if key is None or key.kind != proto_kind(view.key_type):
        raise InvalidArgument(
            f"{path}.values.{view.join_key}",
            f"the join key is required as {proto_kind(view.key_type)}",
        )
    known = {view.join_key} | {feature.name for feature in view.features}
    unknown = sorted(set(row.values) - known)
    if unknown:
        raise InvalidArgument(
            f"{path}.values.{unknown[0]}", f"feature view {view.name!r} has no such field"
        )
    values = []
    for feature in view.features:
        typed = row.values.get(feature.name)
        if typed is not None and typed.kind not in (None, proto_kind(feature.value_type)):
            raise InvalidArgument(
                f"{path}.values.{feature.name}",
                f"expected {type_name(feature.value_type)} ({proto_kind(feature.value_type)}), "
                f"got {typed.kind}",
            )
        values.append(None if typed is None else typed.value)
    return (key.value, *values, row.event_time)
