"""The registry's `ResourceRepository` contract, run against PostgreSQL and against the
in-memory fake the registry's unit tests use (tests/fakes/registry.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from recstack.registry.v1 import entity_pb2, feature_view_pb2, project_pb2

from services.registry.adapters.repository import StoredResource, postgres_unit_of_work
from shared.standard_methods import Condition
from shared.values import VT
from tests.fakes.registry import in_memory_unit_of_work

T0 = datetime(2026, 4, 1, tzinfo=UTC)
UnitOfWork = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(params=["postgres", "memory"])
def uow(request: pytest.FixtureRequest) -> Iterator[UnitOfWork]:
    if request.param == "memory":
        yield in_memory_unit_of_work()[1]
        return
    yield partial(postgres_unit_of_work, request.getfixturevalue("registry_engine"))


@pytest.fixture
def project() -> str:
    # The session's registry database is shared: every test writes a project of its own.
    return f"c_{uuid.uuid4().hex[:8]}"


def _view(project: str, view_id: str, version: int = 1, **fields: Any) -> StoredResource:
    spec = feature_view_pb2.FeatureView(
        entity="user",
        type=feature_view_pb2.FeatureView.TYPE_BATCH,
        fields=[feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64)],
        **fields,
    )
    return StoredResource(
        "feature_view",
        project,
        view_id,
        version,
        spec,
        (f"projects/{project}/entities/user",),
        f"etag-{version}",
        T0,
        T0 + timedelta(minutes=version),
    )


def _entity(project: str, entity_id: str = "user") -> StoredResource:
    spec = entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64)
    return StoredResource("entity", project, entity_id, 1, spec, (), "e", T0, T0)


def test_insert_refuses_a_taken_version_and_get_reads_latest_or_one(uow, project):
    with uow() as repo:
        assert repo.insert(_entity(project))
        assert repo.insert(_view(project, "v", 1, description="one"))
        assert repo.insert(_view(project, "v", 2, description="two"))
        assert not repo.insert(_view(project, "v", 2, description="again"))
    with uow() as repo:
        assert repo.get("feature_view", project, "v") == _view(project, "v", 2, description="two")
        assert repo.get("feature_view", project, "v", 0).version == 2
        assert repo.get("feature_view", project, "v", 1).spec.description == "one"
        assert repo.get("feature_view", project, "v", 3) is None
        assert repo.get("feature_view", project, "w") is None
        assert repo.get("entity", f"{project}x", "user") is None
        assert repo.get_for_update("feature_view", project, "v").version == 2


def test_list_latest_pages_by_id_and_filters_the_latest_version(uow, project):
    with uow() as repo:
        for view_id in ("c", "a", "b"):
            repo.insert(_view(project, view_id, 1, description=f"view {view_id}"))
        repo.insert(_view(project, "b", 2, description="renamed", online_enabled=True))
    with uow() as repo:
        listed = repo.list_latest("feature_view", project, "", 10)
        assert [(r.resource_id, r.version) for r in listed] == [("a", 1), ("b", 2), ("c", 1)]
        assert [r.resource_id for r in repo.list_latest("feature_view", project, "a", 1)] == ["b"]
        online = [Condition(("online_enabled",), "=", "true")]
        assert [
            r.resource_id for r in repo.list_latest("feature_view", project, "", 10, online)
        ] == ["b"]
        # Filters see each resource's latest version only, and defaults are values too.
        old = [Condition(("description",), ":", "VIEW B")]
        assert repo.list_latest("feature_view", project, "", 10, old) == []
        offline = [Condition(("online_enabled",), "!=", "true")]
        assert [
            r.resource_id for r in repo.list_latest("feature_view", project, "", 10, offline)
        ] == [
            "a",
            "c",
        ]


def test_projects_list_across_projects(uow, project):
    with uow() as repo:
        for name in (f"{project}_b", f"{project}_a"):
            repo.insert(
                StoredResource("project", name, name, 1, project_pb2.Project(), (), "", T0, T0)
            )
    with uow() as repo:
        listed = repo.list_latest("project", None, project, 100)
        mine = [r.resource_id for r in listed if r.resource_id.startswith(project)]
        assert mine == [f"{project}_a", f"{project}_b"]


def test_versions_in_order_and_before_a_version(uow, project):
    with uow() as repo:
        for version in (1, 2, 3):
            repo.insert(_view(project, "v", version, online_enabled=version != 2))
    with uow() as repo:
        assert [r.version for r in repo.list_versions("feature_view", project, "v")] == [1, 2, 3]
        before = repo.list_versions_before("feature_view", project, "v", 3, 10)
        assert [r.version for r in before] == [2, 1]
        assert [
            r.version for r in repo.list_versions_before("feature_view", project, "v", None, 2)
        ] == [3, 2]
        online = [Condition(("online_enabled",), "=", "true")]
        assert [
            r.version
            for r in repo.list_versions_before("feature_view", project, "v", None, 10, online)
        ] == [3, 1]


def test_replace_checks_the_etag(uow, project):
    with uow() as repo:
        repo.insert(_view(project, "v"))
    changed = replace(_view(project, "v", description="new"), etag="etag-new")
    with uow() as repo:
        assert not repo.replace(changed, "stale")
        assert repo.replace(changed, "etag-1")
        assert not repo.replace(replace(changed, resource_id="missing"), "etag-1")
    with uow() as repo:
        assert repo.get("feature_view", project, "v") == changed


def test_delete_one_version_or_all_and_dependants(uow, project):
    with uow() as repo:
        repo.insert(_entity(project))
        for version in (1, 2, 3):
            repo.insert(_view(project, "v", version))
        repo.insert(_view(project, "w"))
    with uow() as repo:
        assert repo.dependants(f"projects/{project}/entities/user") == [
            f"projects/{project}/featureViews/v",
            f"projects/{project}/featureViews/w",
        ]
        assert repo.delete("feature_view", project, "v", 2) == 1
        assert [r.version for r in repo.list_versions("feature_view", project, "v")] == [1, 3]
        assert repo.delete("feature_view", project, "v", 0) == 2
        assert repo.delete("feature_view", project, "v", None) == 0
        assert repo.dependants(f"projects/{project}/entities/user") == [
            f"projects/{project}/featureViews/w"
        ]


def test_every_write_is_logged_as_a_change_in_order(uow, project):
    with uow() as repo:
        start = repo.head_revision()
        repo.insert(_entity(project))
        repo.insert(_view(project, "v"))
        repo.replace(replace(_view(project, "v"), etag="x"), "etag-1")
        repo.delete("entity", project, "user", None)
    with uow() as repo:
        changes = repo.changes_since(start, 100)
        mine = [c for c in changes if f"projects/{project}/" in c.name]
        assert [c.name.removeprefix(f"projects/{project}/") for c in mine] == [
            "entities/user",
            "featureViews/v",
            "featureViews/v",
            "entities/user",
        ]
        revisions = [c.revision for c in changes]
        assert revisions == sorted(revisions) and min(revisions) > start
        assert repo.head_revision() == revisions[-1]
        assert len(repo.changes_since(start, 2)) == 2


def test_a_failed_unit_of_work_writes_nothing(uow, project):
    with pytest.raises(RuntimeError), uow() as repo:
        head = repo.head_revision()
        repo.insert(_entity(project))
        raise RuntimeError("a fault before the commit")
    with uow() as repo:
        assert repo.get("entity", project, "user") is None
        assert repo.head_revision() == head
