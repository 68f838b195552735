"""The recommend service's `ResourceRepository` (scenes, experiments, their change log) in a
dict; `unit_of_work` rolls back on an exception, as the PostgreSQL unit of work does."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from services.recommend.catalog import Change, StoredResource


class MemoryRepository:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], StoredResource] = {}
        self.log: list[Change] = []
        # Reads of single resources, so tests can tell a cache from a database round trip.
        self.reads = 0

    @contextmanager
    def unit_of_work(self) -> Iterator[MemoryRepository]:
        records, log = dict(self.records), list(self.log)
        try:
            yield self
        except BaseException:
            self.records, self.log = records, log
            raise

    def insert(self, record: StoredResource) -> bool:
        key = (record.kind, record.resource_id)
        if key in self.records:
            return False
        self.records[key] = copy.deepcopy(record)
        self._logged(record.kind, record.resource_id)
        return True

    def get(self, kind: str, resource_id: str) -> StoredResource | None:
        self.reads += 1
        return copy.deepcopy(self.records.get((kind, resource_id)))

    def list(self, kind: str, after_id: str, limit: int) -> list[StoredResource]:
        found = sorted(
            (r for (k, i), r in self.records.items() if k == kind and i > after_id),
            key=lambda r: r.resource_id,
        )
        return copy.deepcopy(found[:limit])

    def replace(self, record: StoredResource, expected_etag: str) -> bool:
        current = self.records.get((record.kind, record.resource_id))
        if current is None or current.etag != expected_etag:
            return False
        self.records[(record.kind, record.resource_id)] = copy.deepcopy(record)
        self._logged(record.kind, record.resource_id)
        return True

    def delete(self, kind: str, resource_id: str, expected_etag: str) -> bool:
        current = self.records.get((kind, resource_id))
        if current is None or current.etag != expected_etag:
            return False
        del self.records[(kind, resource_id)]
        self._logged(kind, resource_id)
        return True

    def experiments_of(self, scene_id: str) -> list[StoredResource]:
        experiments = [r for (k, _), r in self.records.items() if k == "experiment"]
        found = sorted(
            (r for r in experiments if r.spec.scene == scene_id), key=lambda r: r.resource_id
        )
        return copy.deepcopy(found)

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        return [c for c in self.log if c.revision > revision][:limit]

    def head_revision(self) -> int:
        return len(self.log)

    def _logged(self, kind: str, resource_id: str) -> None:
        self.log.append(Change(len(self.log) + 1, kind, resource_id))
