"""What an online-feature read means, for every reader of the online store.

Serving's `GetOnlineFeatures` and the recommend service's direct user-feature read both
resolve `view:feature` refs into one store read (`ReadPlanner`) and decide a row's status the
same way, from here, so the two readers can never disagree on what is read or what is fresh.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared.errors import InvalidArgument, quoted
from shared.feature_views import ViewSchema

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
# Distinct request shapes kept resolved; beyond this the cache starts over (bounded memory).
MAX_PLANS = 10_000


class Status(enum.IntEnum):
    PRESENT = 1
    NOT_FOUND = 2
    OUTSIDE_TTL = 3


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
            raise InvalidArgument(
                field, f"{quoted(text)} is not `view:feature`, `view:*` or `view@N:f`"
            )
        return cls(view, int(version or 0), feature)

    @property
    def view_label(self) -> str:
        """How the ref named its view: `view`, or `view@N` when it pinned a version."""
        return f"{self.view}@{self.version}" if self.version else self.view


def micros(moment: datetime | None) -> int | None:
    """Microseconds since the Unix epoch (None stays None: the view has no row)."""
    return None if moment is None else (moment - EPOCH) // ONE_MICROSECOND


def now_micros(now: datetime | None = None) -> int:
    return ((now or datetime.now(UTC)) - EPOCH) // ONE_MICROSECOND


def statuses(view: ViewSchema, event_micros: list[int | None], now_us: int) -> list[Status]:
    """NOT_FOUND without a row; OUTSIDE_TTL when older than the view's TTL (0: no TTL)."""
    present, missing, stale = Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_TTL
    if not view.ttl_seconds:
        return [missing if m is None else present for m in event_micros]
    cutoff = now_us - round(view.ttl_seconds * 1_000_000)
    return [missing if m is None else stale if m < cutoff else present for m in event_micros]


class PlanDefinitions(Protocol):
    """Where feature definitions come from (the cached registry client)."""

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...
    def model_feature_set(self, project: str, set_id: str) -> Any: ...


@dataclass(frozen=True)
class ViewPlan:
    view: ViewSchema
    features: tuple[str, ...]
    # Each feature's column name: `view:feature` as the caller wrote the view.
    names: tuple[str, ...]
    value_types: tuple[int, ...]


@dataclass(frozen=True)
class ReadPlan:
    views: tuple[ViewPlan, ...]
    # The store read: each view with its features, in `views` order.
    requests: tuple[tuple[ViewSchema, tuple[str, ...]], ...]
    resolved_at: float


class ReadPlanner:
    """Feature refs (or a model feature set) → the views and features of one store read,
    resolved once per request shape and re-checked against the definitions every
    `definitions_seconds`. Thread-safe."""

    def __init__(
        self,
        definitions: PlanDefinitions,
        *,
        definitions_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._definitions = definitions
        self._definitions_seconds = definitions_seconds
        self._clock = clock
        self._plans: dict[tuple[str, tuple[str, ...], str], ReadPlan] = {}
        self._lock = threading.Lock()

    def plan(self, project: str, refs: Sequence[str], feature_set: str = "") -> ReadPlan:
        """InvalidArgument for refs that are malformed, name unknown features or span
        entities; NotFound (from the definitions) for unknown views or feature sets."""
        key = (project, tuple(refs), feature_set)
        plan = self._plans.get(key)
        if plan is not None and self._clock() - plan.resolved_at < self._definitions_seconds:
            return plan
        plan = self._resolve(project, key[1], feature_set)
        with self._lock:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _resolve(self, project: str, refs: Sequence[str], feature_set: str) -> ReadPlan:
        if not project:
            raise InvalidArgument("project", "is required")
        if bool(refs) == bool(feature_set):
            raise InvalidArgument("features", "set exactly one of features and model_feature_set")
        if refs:
            parsed = [FeatureRef.parse(text, f"features[{i}]") for i, text in enumerate(refs)]
        else:
            parsed = self._feature_set_refs(project, feature_set)
        by_view: dict[tuple[str, int], list[str]] = {}
        labels: dict[tuple[str, int], str] = {}
        for ref in parsed:
            by_view.setdefault((ref.view, ref.version), []).append(ref.feature)
            # Columns are named as the caller wrote the view; a feature set's refs are pinned
            # by the registry, but its users wrote (and look up) `view:feature`.
            labels[(ref.view, ref.version)] = ref.view_label if refs else ref.view
        views = []
        for (view_id, version), features in by_view.items():
            view = self._definitions.view_schema(project, view_id, version)
            expanded = _expand(view, features)
            views.append(_view_plan(view, labels[(view_id, version)], expanded))
        if len({(plan.view.join_key, plan.view.key_type) for plan in views}) > 1:
            raise InvalidArgument("features", "all feature views of one call must share an entity")
        requests = tuple((plan.view, plan.features) for plan in views)
        return ReadPlan(tuple(views), requests, self._clock())

    def _feature_set_refs(self, project: str, set_id: str) -> list[FeatureRef]:
        feature_set = self._definitions.model_feature_set(project, set_id)
        return [
            FeatureRef(ref.feature_view, ref.version, ref.feature)
            for ref in feature_set.resolved_features
        ]


def _view_plan(view: ViewSchema, label: str, features: list[str]) -> ViewPlan:
    types = {feature.name: feature.value_type for feature in view.features}
    return ViewPlan(
        view,
        tuple(features),
        tuple(f"{label}:{feature}" for feature in features),
        tuple(types[feature] for feature in features),
    )


def _expand(view: ViewSchema, features: list[str]) -> list[str]:
    if "*" in features:
        return [feature.name for feature in view.features]
    for feature in features:
        if view.feature(feature) is None:
            raise InvalidArgument(
                "features",
                f"feature view {quoted(view.name)} v{view.version} has no feature "
                f"{quoted(feature)}",
            )
    return list(dict.fromkeys(features))
