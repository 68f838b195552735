"""An in-memory registry repository that honours `ResourceRepository`, for unit tests; the
contract suite (tests/integration/test_contract_registry_repository.py) holds it to the
PostgreSQL repository's behaviour."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from google.protobuf import json_format

from services.registry.adapters.repository import Change, stored_name


class InMemoryRepository:
    def __init__(self):
        self.rows = {}
        self.log = []

    def transaction(self):
        return None

    def _logged(self, kind, project, resource_id, version):
        self.log.append(Change(len(self.log) + 1, stored_name(kind, project, resource_id, version)))

    def insert(self, record):
        key = (record.kind, record.project, record.resource_id, record.version)
        if key in self.rows:
            return False
        self.rows[key] = copy.deepcopy(record)
        self._logged(*key)
        return True

    def get_for_update(self, kind, project, resource_id):
        return self.get(kind, project, resource_id)

    def get(self, kind, project, resource_id, version=None):
        matches = [
            row
            for (k, p, r, v), row in self.rows.items()
            if (k, p, r) == (kind, project, resource_id) and (not version or version == v)
        ]
        return copy.deepcopy(max(matches, key=lambda row: row.version, default=None))

    def list_latest(self, kind, project, after_id, limit, conditions=()):
        latest = {}
        for (k, p, r, v), row in self.rows.items():
            wanted = k == kind and project in (None, p) and r > after_id
            if wanted and (r not in latest or latest[r].version < v):
                latest[r] = row
        found = [latest[r] for r in sorted(latest)]
        chosen = [row for row in found if all(_matches(row.spec, c) for c in conditions)]
        return copy.deepcopy(chosen[:limit])

    def list_versions(self, kind, project, resource_id):
        rows = [row for key, row in self.rows.items() if key[:3] == (kind, project, resource_id)]
        return sorted(rows, key=lambda row: row.version)

    def list_versions_before(self, kind, project, resource_id, before, limit, conditions=()):
        rows = [
            row
            for row in reversed(self.list_versions(kind, project, resource_id))
            if (before is None or row.version < before)
            and all(_matches(row.spec, c) for c in conditions)
        ]
        return rows[:limit]

    def changes_since(self, revision, limit):
        return [change for change in self.log if change.revision > revision][:limit]

    def head_revision(self):
        return self.log[-1].revision if self.log else 0

    def replace(self, record, expected_etag):
        key = (record.kind, record.project, record.resource_id, record.version)
        if key not in self.rows or self.rows[key].etag != expected_etag:
            return False
        self.rows[key] = copy.deepcopy(record)
        self._logged(*key)
        return True

    def delete(self, kind, project, resource_id, version):
        doomed = [
            key
            for key in self.rows
            if key[:3] == (kind, project, resource_id) and (not version or version == key[3])
        ]
        for key in doomed:
            del self.rows[key]
        if doomed:
            self._logged(kind, project, resource_id, version or 0)
        return len(doomed)

    def dependants(self, ref):
        names = (
            stored_name(row.kind, row.project, row.resource_id, row.version)
            for row in sorted(self.rows.values(), key=lambda r: (r.kind, r.resource_id, r.version))
            if ref in row.refs
        )
        return list(dict.fromkeys(names))


def _matches(spec, condition):
    value = json_format.MessageToDict(
        spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for part in condition.path:
        value = value.get(part) if isinstance(value, dict) else None
    text = None if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if condition.operator == "=":
        return text == condition.value
    if condition.operator == "!=":
        return text != condition.value
    return text is not None and condition.value.lower() in text.lower()


def in_memory_unit_of_work() -> tuple[dict[str, InMemoryRepository], object]:
    """A unit of work over a fresh repository, and the state holding the committed one."""
    state = {"repo": InMemoryRepository()}

    @contextmanager
    def unit_of_work() -> Iterator[InMemoryRepository]:
        # Work on a copy and publish it only on success: the rollback a real transaction gives.
        working = copy.deepcopy(state["repo"])
        yield working
        state["repo"] = working

    return state, unit_of_work
