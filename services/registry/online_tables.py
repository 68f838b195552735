"""Keeps one online-store table per feature-view version: created with the version, dropped
with it, so serving and materialization find the table a definition promises."""

from __future__ import annotations

from services.registry.adapters.repository import StoredResource
from services.registry.kinds import ENTITY, FEATURE_VIEW
from services.registry.registry import Registry
from shared.feature_views import ViewSchema, view_schema
from shared.online_store import OnlineStore


class OnlineTables:
    def __init__(self, store: OnlineStore) -> None:
        self._store = store
        self._registry: Registry | None = None

    def bind(self, registry: Registry) -> None:
        """The registry whose entities give the tables their key column."""
        self._registry = registry

    def version_created(self, kind: str, record: StoredResource) -> None:
        if kind != FEATURE_VIEW.key or self._registry is None:
            return
        spec = record.spec
        entity = self._registry.get(ENTITY, ENTITY.name(record.project, spec.entity))
        self._store.ensure_table(view_schema(record.project, spec, entity))

    def version_deleted(self, kind: str, record: StoredResource) -> None:
        if kind != FEATURE_VIEW.key:
            return
        # Dropping needs only the table's identity (project, view, version), not its columns.
        self._store.drop_table(
            ViewSchema(record.project, record.resource_id, record.version, "", 0, ())
        )
