"""`UserFeatureReader` straight from the online store: the read serving runs for
`GetOnlineFeatures`, made in this process.

The recommend service already holds the online store (its item cache scans it), so a user's
features cost one prepared round trip to PostgreSQL instead of a gRPC call to serving that
makes the same round trip. Refs are parsed and rows judged fresh by `shared.online_features`,
the rules serving applies, so both readers return the same values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.feature_views import ViewSchema
from shared.online_features import FeatureRef, Status, micros, now_micros, statuses
from shared.online_store import OnlineStore

# Distinct ref lists kept resolved (one per scene and model version in practice).
MAX_PLANS = 1024


class ViewSchemas(Protocol):
    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...


@dataclass(frozen=True)
class _ViewPlan:
    view: ViewSchema
    features: tuple[str, ...]
    # The caller's ref for each feature, in `features` order.
    refs: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    views: tuple[_ViewPlan, ...]
    requests: tuple[tuple[ViewSchema, tuple[str, ...]], ...]
    resolved_at: float


class OnlineStoreUserFeatures:
    """Thread-safe; a ref list is resolved against the registry once per `plan_seconds`, so a
    new view version is read within that period."""

    def __init__(
        self,
        store: OnlineStore,
        definitions: ViewSchemas,
        *,
        plan_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._plan_seconds = plan_seconds
        self._clock = clock
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing of its own: the store belongs to the service, which closes it."""

    def read(self, project: str, refs: Sequence[str], key: Any, key_type: int) -> dict[str, Any]:
        plan = self._plan(project, tuple(refs))
        for view_plan in plan.views:
            if view_plan.view.key_type != key_type:
                raise FailedPrecondition(
                    f"feature view {view_plan.view.name!r} is keyed by another type than the "
                    "scene's user entity",
                    reason="USER_FEATURES_INVALID",
                )
        columns = self._store.read(plan.requests, [key])
        now_us = now_micros()
        values: dict[str, Any] = {}
        for view_plan, view_columns in zip(plan.views, columns, strict=True):
            status = statuses(view_plan.view, [micros(view_columns.event_times[0])], now_us)[0]
            for feature, ref in zip(view_plan.features, view_plan.refs, strict=True):
                present = status is Status.PRESENT
                values[ref] = view_columns.values[feature][0] if present else None
        return values

    def _plan(self, project: str, refs: tuple[str, ...]) -> _Plan:
        key = (project, refs)
        plan = self._plans.get(key)
        if plan is not None and self._clock() - plan.resolved_at < self._plan_seconds:
            return plan
        plan = self._resolve(project, refs)
        with self._lock:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _resolve(self, project: str, refs: tuple[str, ...]) -> _Plan:
        by_view: dict[tuple[str, int], dict[str, str]] = {}
        for index, text in enumerate(refs):
            try:
                ref = FeatureRef.parse(text, f"features[{index}]")
            except InvalidArgument as exc:
                raise _invalid(exc.message) from None
            by_view.setdefault((ref.view, ref.version), {})[ref.feature] = text
        views = []
        for (view_id, version), features in by_view.items():
            try:
                view = self._definitions.view_schema(project, view_id, version)
            except NotFound as exc:
                raise _invalid(exc.message) from None
            for feature in features:
                if view.feature(feature) is None:
                    raise _invalid(f"feature view {view_id!r} has no feature {feature!r}")
            views.append(_ViewPlan(view, tuple(features), tuple(features.values())))
        requests = tuple((view.view, view.features) for view in views)
        return _Plan(tuple(views), requests, self._clock())


def _invalid(message: str) -> FailedPrecondition:
    # The scene (or model version) names features the store does not have: a configuration
    # error of the scene, as serving's NOT_FOUND/INVALID_ARGUMENT is for the gRPC reader.
    return FailedPrecondition(f"user features: {message}", reason="USER_FEATURES_INVALID")
