"""Online feature reads and writes, validated against registry definitions.

Knows nothing of gRPC: the servicer hands in plain values and gets plain columns back.
A read resolves its feature refs once per request shape (cached, re-checked against the
definitions every `definitions_seconds`), then costs one store round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.serving.produced import ProducedFields
from shared.embeddings import TextEmbedder
from shared.errors import DomainError, InvalidArgument, quoted
from shared.feature_views import ViewSchema
from shared.online_features import (
    ReadPlanner,
    Status,
    ViewPlan,
    micros,
    now_micros,
    statuses,
)
from shared.online_store import OnlineStore, ViewColumns, WriteResult
from shared.values import proto_kind, type_name

MAX_KEYS = 1000
MAX_WRITE_ROWS = 10_000


class Definitions(Protocol):
    """Where feature definitions come from (the cached registry client)."""

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...
    def model_feature_set(self, project: str, set_id: str) -> Any: ...
    def embedding_model(self, project: str, model_id: str) -> Any: ...


@dataclass(frozen=True)
class EntityKeys:
    """Join-key values as they arrived: the `Value` arm of each key, and its value."""

    kinds: list[str | None]
    values: Sequence[Any]


@dataclass(frozen=True)
class ViewRead:
    """One view's share of a read: a column per requested feature, and per key a status and
    an event time (microseconds since the Unix epoch, None where the view has no row)."""

    view: ViewSchema
    names: tuple[str, ...]
    value_types: tuple[int, ...]
    values: Sequence[Sequence[Any]]
    statuses: list[Status]
    event_micros: list[int | None]


@dataclass(frozen=True)
class TypedValue:
    """A value as it arrived: the Python value and the `Value` arm that carried it."""

    value: Any
    kind: str | None


@dataclass(frozen=True)
class RowInput:
    values: dict[str, TypedValue]
    event_time: datetime | None


@dataclass(frozen=True)
class PushBatch:
    project: str
    feature_view: str
    version: int
    rows: Sequence[RowInput]


@dataclass(frozen=True)
class PushResult:
    written: int
    stale: int
    batches: int


class Observer(Protocol):
    """Told about every store call (metrics)."""

    def read(self, views: Sequence[ViewRead], seconds: float, now_micros: int) -> None: ...
    def write(self, view: ViewSchema, result: WriteResult, seconds: float) -> None: ...


class _Unobserved:
    def read(self, views: Sequence[ViewRead], seconds: float, now_micros: int) -> None:
        return None

    def write(self, view: ViewSchema, result: WriteResult, seconds: float) -> None:
        return None


class FeatureServer:
    def __init__(
        self,
        store: OnlineStore,
        definitions: Definitions,
        *,
        observer: Observer | None = None,
        definitions_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        embedder: TextEmbedder | None = None,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._produced = ProducedFields(embedder, definitions)
        self._observer = observer or _Unobserved()
        self._planner = ReadPlanner(
            definitions, definitions_seconds=definitions_seconds, clock=clock
        )

    def get_online_features(
        self,
        project: str,
        refs: Sequence[str],
        feature_set: str,
        keys: EntityKeys,
        now: datetime | None = None,
    ) -> list[ViewRead]:
        plan = self._planner.plan(project, refs, feature_set)
        key_values = _check_keys(keys, plan.views[0].view)
        started = time.perf_counter()
        columns = self._store.read(plan.requests, key_values)
        seconds = time.perf_counter() - started
        now_us = now_micros(now)
        views = [
            _view_read(view_plan, view_columns, now_us)
            for view_plan, view_columns in zip(plan.views, columns, strict=True)
        ]
        self._observer.read(views, seconds, now_us)
        return views

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
        if any(feature.produced for feature in view.features):
            converted = self._produced.fill(project, view, converted)
        started = time.perf_counter()
        result = self._store.write(view, converted)
        self._observer.write(view, result, time.perf_counter() - started)
        return result

    def push(self, batches: Iterable[PushBatch]) -> PushResult:
        """Write each batch in turn (each atomic). A rejected batch writes nothing and ends the
        push; its error says how many batches (and rows) before it were written."""
        written = stale = count = 0
        try:
            for batch in batches:
                result = self.write(batch.project, batch.feature_view, batch.version, batch.rows)
                written, stale, count = written + result.written, stale + result.stale, count + 1
        except DomainError as error:
            error.message = (
                f"batch {count + 1} was rejected and wrote nothing; the {count} batches before "
                f"it were written ({written} rows): {error.message}"
            )
            error.args = (error.message,)
            error.metadata.update(batches_written=str(count), rows_written=str(written))
            raise
        return PushResult(written, stale, count)


def _view_read(plan: ViewPlan, columns: ViewColumns, now_us: int) -> ViewRead:
    # Event times as integer microseconds: statuses, ages and the wire encoding all need them.
    event_micros = [micros(t) for t in columns.event_times]
    return ViewRead(
        plan.view,
        plan.names,
        plan.value_types,
        [columns.values[feature] for feature in plan.features],
        statuses(plan.view, event_micros, now_us),
        event_micros,
    )


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")


def _check_keys(keys: EntityKeys, view: ViewSchema) -> Sequence[Any]:
    count = len(keys.kinds)
    if not count:
        raise InvalidArgument("entity_keys", "send at least one entity key")
    if count > MAX_KEYS:
        raise InvalidArgument("entity_keys", f"at most {MAX_KEYS} keys per call, got {count}")
    expected = proto_kind(view.key_type)
    if keys.kinds.count(expected) != count:
        index = next(i for i, kind in enumerate(keys.kinds) if kind != expected)
        raise InvalidArgument(
            f"entity_keys[{index}]",
            f"{view.join_key} is {type_name(view.key_type)}; send it as {expected}",
        )
    return keys.values


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
            f"{path}.values.{unknown[0]}", f"feature view {quoted(view.name)} has no such field"
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
