"""Keeps one online-store table per feature-view version: created with the version, dropped
with it, so serving and materialization find the table a definition promises."""

from __future__ import annotations

from services.registry.adapters.repository import ResourceRepository, StoredResource
from services.registry.kinds import ENTITY, FEATURE_VIEW
from shared.errors import NotFound
from shared.feature_views import ViewSchema, view_schema
from shared.online_store import OnlineStore


class OnlineTables:
    """Called inside the registry's unit of work: a table is created (or dropped) in the same
    transaction as its version, so an Apply commits definitions and tables together or neither.
    """

    def __init__(self, store: OnlineStore) -> None:
        self._store = store

    def version_created(self, kind: str, record: StoredResource, repo: ResourceRepository) -> None:
        if kind != FEATURE_VIEW.key:
            return
        spec = record.spec
        entity = repo.get(ENTITY.key, record.project, spec.entity)
        if entity is None:
            raise NotFound(f"{ENTITY.name(record.project, spec.entity)} does not exist")
        schema = view_schema(record.project, spec, entity.spec)
        self._store.ensure_table(schema, within=repo.transaction())

    def version_deleted(self, kind: str, record: StoredResource, repo: ResourceRepository) -> None:
        if kind != FEATURE_VIEW.key:
            return
        # Dropping needs only the table's identity (project, view, version), not its columns.
        identity = ViewSchema(record.project, record.resource_id, record.version, "", 0, ())
        self._store.drop_table(identity, within=repo.transaction())
