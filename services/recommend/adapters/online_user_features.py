"""`UserFeatureReader` straight from the online store: the read serving runs for
`GetOnlineFeatures`, made in this process.

The recommend service already holds the online store (its item cache scans it), so a user's
features cost one prepared round trip to PostgreSQL instead of a gRPC call to serving that
makes the same round trip. Refs are resolved and rows judged fresh by `shared.online_features`
(`ReadPlanner`, `statuses`), as serving does, so both readers return the same values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.online_features import (
    PlanDefinitions,
    ReadPlanner,
    Status,
    micros,
    now_micros,
    statuses,
)
from shared.online_store import OnlineStore


class OnlineStoreUserFeatures:
    """Thread-safe; a ref list is resolved against the registry once per `plan_seconds`, so a
    new view version is read within that period."""

    def __init__(
        self,
        store: OnlineStore,
        definitions: PlanDefinitions,
        *,
        plan_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._planner = ReadPlanner(definitions, definitions_seconds=plan_seconds, clock=clock)

    def close(self) -> None:
        """Nothing of its own: the store belongs to the service, which closes it."""

    def read(self, project: str, refs: Sequence[str], key: Any, key_type: int) -> dict[str, Any]:
        try:
            plan = self._planner.plan(project, refs)
        except (InvalidArgument, NotFound) as exc:
            # The scene (or model version) names features the store does not have: a
            # configuration error of the scene, as serving's answer is for the gRPC reader.
            raise FailedPrecondition(
                f"user features: {exc.message}", reason="USER_FEATURES_INVALID"
            ) from None
        if plan.views[0].view.key_type != key_type:
            raise FailedPrecondition(
                f"feature view {plan.views[0].view.name!r} is keyed by another type than the "
                "scene's user entity",
                reason="USER_FEATURES_INVALID",
            )
        columns = self._store.read(plan.requests, [key])
        now_us = now_micros()
        values: dict[str, Any] = {}
        for view_plan, view_columns in zip(plan.views, columns, strict=True):
            status = statuses(view_plan.view, [micros(view_columns.event_times[0])], now_us)[0]
            present = status is Status.PRESENT
            for feature, name in zip(view_plan.features, view_plan.names, strict=True):
                values[name] = view_columns.values[feature][0] if present else None
        return values
