"""The recommend service's `ResourceRepository` contract (scenes, experiments, the change log),
run against PostgreSQL and against the in-memory fake its unit tests use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from recstack.recommend.v1 import experiment_pb2, scene_pb2

from services.recommend.adapters.repository import SCHEMA, postgres_unit_of_work
from services.recommend.catalog import StoredResource
from services.recommend.server import MIGRATIONS
from tests.fakes.recommend import MemoryRepository
from tests.plugins.postgres import migrated_engine

T0 = datetime(2026, 4, 1, tzinfo=UTC)
UnitOfWork = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(scope="module")
def engine(postgres_server_url: str) -> Iterator[Any]:
    # A database of its own: the change log is global, and the session's recommend service
    # would serve what these tests write.
    with migrated_engine(postgres_server_url, SCHEMA, MIGRATIONS, prefix="contract") as engine:
        yield engine


@pytest.fixture(params=["postgres", "memory"])
def uow(request: pytest.FixtureRequest) -> Iterator[UnitOfWork]:
    if request.param == "memory":
        yield MemoryRepository().unit_of_work
        return
    engine = request.getfixturevalue("engine")
    yield partial(postgres_unit_of_work, engine)
    with engine.begin() as connection:
        for table in ("scenes", "experiments", "changes"):
            connection.exec_driver_sql(f"DELETE FROM {SCHEMA}.{table}")


def _scene(scene_id: str, top_n: int = 10, etag: str = "e1") -> StoredResource:
    return StoredResource("scene", scene_id, scene_pb2.Scene(top_n=top_n), etag, T0, T0)


def _experiment(experiment_id: str, scene: str) -> StoredResource:
    spec = experiment_pb2.Experiment(scene=scene)
    return StoredResource("experiment", experiment_id, spec, "x1", T0, T0)


def test_insert_get_and_list_in_id_order(uow):
    with uow() as repo:
        assert repo.insert(_scene("b"))
        assert repo.insert(_scene("a", 5))
        assert not repo.insert(_scene("a", 7))
        assert repo.insert(_scene("c"))
    with uow() as repo:
        assert repo.get("scene", "a") == _scene("a", 5)
        assert repo.get("scene", "zz") is None
        assert repo.get("experiment", "a") is None
        assert [r.resource_id for r in repo.list("scene", "", 10)] == ["a", "b", "c"]
        assert [r.resource_id for r in repo.list("scene", "a", 1)] == ["b"]


def test_replace_and_delete_check_the_etag(uow):
    with uow() as repo:
        repo.insert(_scene("home"))
    with uow() as repo:
        assert not repo.replace(_scene("home", 3, "e2"), "stale")
        assert repo.replace(_scene("home", 3, "e2"), "e1")
        assert not repo.replace(_scene("missing", 3, "e2"), "e1")
        assert not repo.delete("scene", "home", "e1")
        assert not repo.delete("scene", "missing", "e1")
    with uow() as repo:
        assert repo.get("scene", "home") == _scene("home", 3, "e2")
        assert repo.delete("scene", "home", "e2")
        assert repo.get("scene", "home") is None


def test_experiments_of_a_scene(uow):
    with uow() as repo:
        repo.insert(_experiment("y", "home"))
        repo.insert(_experiment("x", "home"))
        repo.insert(_experiment("z", "search"))
    with uow() as repo:
        assert [r.resource_id for r in repo.experiments_of("home")] == ["x", "y"]
        assert repo.experiments_of("nothing") == []


def test_every_successful_write_is_logged_in_order(uow):
    with uow() as repo:
        assert repo.head_revision() == 0
        repo.insert(_scene("home"))
        repo.insert(_scene("home"))  # refused: not a write
        repo.replace(replace(_scene("home"), etag="e2"), "e1")
        repo.delete("scene", "home", "stale")  # refused
        repo.delete("scene", "home", "e2")
        repo.insert(_experiment("x", "home"))
    with uow() as repo:
        changes = repo.changes_since(0, 100)
        assert [(c.kind, c.resource_id) for c in changes] == [
            ("scene", "home"),
            ("scene", "home"),
            ("scene", "home"),
            ("experiment", "x"),
        ]
        revisions = [c.revision for c in changes]
        assert revisions == sorted(revisions) and repo.head_revision() == revisions[-1]
        assert [c.revision for c in repo.changes_since(revisions[1], 1)] == [revisions[2]]


def test_a_failed_unit_of_work_writes_nothing(uow):
    with pytest.raises(RuntimeError), uow() as repo:
        repo.insert(_scene("home"))
        raise RuntimeError("a fault before the commit")
    with uow() as repo:
        assert repo.get("scene", "home") is None
        assert repo.head_revision() == 0
