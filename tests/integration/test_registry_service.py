"""Registry over gRPC with real PostgreSQL: the standard methods and their bad paths."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import (
    registry_service_pb2 as pb,
)

VT = value_pb2.ValueType


@pytest.fixture(scope="module")
def stub(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
def project(stub):
    project_id = f"p_{uuid.uuid4().hex[:8]}"
    stub.CreateProject(
        pb.CreateProjectRequest(project_id=project_id, project=project_pb2.Project())
    )
    return project_id


def _entity(stub, project, entity_id="user"):
    return stub.CreateEntity(
        pb.CreateEntityRequest(
            parent=f"projects/{project}",
            entity_id=entity_id,
            entity=entity_pb2.Entity(join_key=f"{entity_id}_id", key_type=VT.VALUE_TYPE_INT64),
        )
    ).entity


def _view(project, entity="user", fields=None):
    return feature_view_pb2.FeatureView(
        entity=entity,
        type=feature_view_pb2.FeatureView.TYPE_REAL_TIME,
        fields=fields
        or [
            feature_view_pb2.FeatureField(name=f"{entity}_id", value_type=VT.VALUE_TYPE_INT64),
            feature_view_pb2.FeatureField(name="age", value_type=VT.VALUE_TYPE_DOUBLE),
        ],
    )


def _error(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_create_get_list_entity(stub, project):
    created = _entity(stub, project)
    assert created.name == f"projects/{project}/entities/user"
    assert created.etag
    got = stub.GetEntity(pb.GetEntityRequest(name=created.name)).entity
    assert got == created
    listed = stub.ListEntities(pb.ListEntitiesRequest(parent=f"projects/{project}")).entities
    assert [entity.name for entity in listed] == [created.name]


def test_pagination_walks_every_page(stub, project):
    for index in range(7):
        _entity(stub, project, f"e{index}")
    names, token = [], ""
    while True:
        page = stub.ListEntities(
            pb.ListEntitiesRequest(parent=f"projects/{project}", page_size=3, page_token=token)
        )
        names += [entity.name.rsplit("/", 1)[1] for entity in page.entities]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"e{index}" for index in range(7)]


def test_missing_join_key_is_invalid_argument_naming_the_field(stub, project):
    error = _error(
        lambda: stub.CreateEntity(
            pb.CreateEntityRequest(
                parent=f"projects/{project}",
                entity_id="user",
                entity=entity_pb2.Entity(key_type=VT.VALUE_TYPE_INT64),
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entity.join_key" in error.details()
    status = rpc_status.from_call(error)
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert bad_request.field_violations[0].field == "entity.join_key"
    listed = stub.ListEntities(pb.ListEntitiesRequest(parent=f"projects/{project}")).entities
    assert list(listed) == []


def test_unknown_resource_is_not_found(stub, project):
    error = _error(
        lambda: stub.GetEntity(pb.GetEntityRequest(name=f"projects/{project}/entities/nope"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_duplicate_create_is_already_exists(stub, project):
    _entity(stub, project)
    error = _error(lambda: _entity(stub, project))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def test_feature_view_with_unknown_entity_is_not_found_and_writes_nothing(stub, project):
    error = _error(
        lambda: stub.CreateFeatureView(
            pb.CreateFeatureViewRequest(
                parent=f"projects/{project}", feature_view_id="users", feature_view=_view(project)
            )
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "feature_view.entity" in error.details()
    views = stub.ListFeatureViews(pb.ListFeatureViewsRequest(parent=f"projects/{project}"))
    assert list(views.feature_views) == []


def test_schema_update_creates_a_version_and_old_one_stays_readable(stub, project):
    _entity(stub, project)
    view = stub.CreateFeatureView(
        pb.CreateFeatureViewRequest(
            parent=f"projects/{project}", feature_view_id="users", feature_view=_view(project)
        )
    ).feature_view
    assert view.version == 1
    view.fields.add(name="score", value_type=VT.VALUE_TYPE_FLOAT)
    updated = stub.UpdateFeatureView(
        pb.UpdateFeatureViewRequest(
            feature_view=view, update_mask=field_mask_pb2.FieldMask(paths=["fields"])
        )
    ).feature_view
    assert updated.version == 2
    old = stub.GetFeatureView(pb.GetFeatureViewRequest(name=view.name, version=1)).feature_view
    assert [field.name for field in old.fields] == ["user_id", "age"]
    latest = stub.GetFeatureView(pb.GetFeatureViewRequest(name=view.name)).feature_view
    assert [field.name for field in latest.fields] == ["user_id", "age", "score"]
    updated.description = "in place"
    described = stub.UpdateFeatureView(
        pb.UpdateFeatureViewRequest(
            feature_view=updated, update_mask=field_mask_pb2.FieldMask(paths=["description"])
        )
    ).feature_view
    assert (described.version, described.description) == (2, "in place")


def test_stale_etag_is_aborted(stub, project):
    entity = _entity(stub, project)
    entity.description = "first"
    stub.UpdateEntity(pb.UpdateEntityRequest(entity=entity))
    entity.description = "second"
    error = _error(lambda: stub.UpdateEntity(pb.UpdateEntityRequest(entity=entity)))
    assert error.code() == grpc.StatusCode.ABORTED
    got = stub.GetEntity(pb.GetEntityRequest(name=entity.name)).entity
    assert got.description == "first"


def test_delete_refuses_while_dependants_exist(stub, project):
    entity = _entity(stub, project)
    stub.CreateFeatureView(
        pb.CreateFeatureViewRequest(
            parent=f"projects/{project}", feature_view_id="users", feature_view=_view(project)
        )
    )
    error = _error(lambda: stub.DeleteEntity(pb.DeleteEntityRequest(name=entity.name)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "featureViews/users" in error.details()
    assert stub.GetEntity(pb.GetEntityRequest(name=entity.name)).entity == entity


def test_file_source_requires_path(stub, project):
    error = _error(
        lambda: stub.CreateDataSource(
            pb.CreateDataSourceRequest(
                parent=f"projects/{project}",
                data_source_id="events",
                data_source=data_source_pb2.DataSource(
                    file=data_source_pb2.FileSource(
                        format=data_source_pb2.FileSource.FORMAT_PARQUET
                    ),
                    event_timestamp_column="ts",
                ),
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "data_source.file.path" in error.details()


def _apply(stub, project, definitions, **options):
    response = stub.Apply(
        pb.ApplyRequest(parent=f"projects/{project}", definitions=definitions, **options)
    )
    return [
        (step.name.rsplit("/", 1)[1], pb.PlanStep.Action.Name(step.action))
        for step in response.steps
    ]


def _definitions(description="", extra_field=False):
    view = _view("x", entity="user")
    if extra_field:
        view.fields.add(name="score", value_type=VT.VALUE_TYPE_FLOAT)
    view.description = description
    return [
        pb.Definition(
            id="user", entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64)
        ),
        pb.Definition(id="profile", feature_view=view),
    ]


def test_apply_is_idempotent_versions_schema_changes_and_prunes(stub):
    project = f"a_{uuid.uuid4().hex[:8]}"
    assert _apply(stub, project, _definitions()) == [
        (project, "ACTION_CREATE"),
        ("user", "ACTION_CREATE"),
        ("profile", "ACTION_CREATE"),
    ]
    assert _apply(stub, project, _definitions()) == [
        ("user", "ACTION_UNCHANGED"),
        ("profile", "ACTION_UNCHANGED"),
    ]
    assert _apply(stub, project, _definitions("about users"))[1] == ("profile", "ACTION_UPDATE")
    planned = _apply(stub, project, _definitions("about users", True), validate_only=True)
    assert planned[1] == ("profile", "ACTION_NEW_VERSION")
    name = f"projects/{project}/featureViews/profile"
    assert stub.GetFeatureView(pb.GetFeatureViewRequest(name=name)).feature_view.version == 1
    assert _apply(stub, project, _definitions("about users", True))[1] == (
        "profile",
        "ACTION_NEW_VERSION",
    )
    assert stub.GetFeatureView(pb.GetFeatureViewRequest(name=name)).feature_view.version == 2
    assert _apply(stub, project, _definitions()[:1], prune=True) == [
        ("user", "ACTION_UNCHANGED"),
        ("profile", "ACTION_DELETE"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetFeatureView(pb.GetFeatureViewRequest(name=name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_filter_selects_by_field_and_tag(stub, project):
    _entity(stub, project)
    for view_id, team in (("a", "ranking"), ("b", "search")):
        view = _view(project)
        view.tags["team"] = team
        view.description = f"view {view_id}"
        stub.CreateFeatureView(
            pb.CreateFeatureViewRequest(
                parent=f"projects/{project}", feature_view_id=view_id, feature_view=view
            )
        )

    def listed(text):
        request = pb.ListFeatureViewsRequest(parent=f"projects/{project}", filter=text)
        return [
            view.name.rsplit("/", 1)[1] for view in stub.ListFeatureViews(request).feature_views
        ]

    assert listed("tags.team=search") == ["b"]
    assert listed('description:"VIEW A"') == ["a"]
    assert listed("type=TYPE_REAL_TIME AND tags.team!=search") == ["a"]
    assert listed("online_enabled=false") == ["a", "b"]


def test_each_view_version_gets_an_online_table_dropped_with_it(stub, project, database_url):
    import psycopg

    from shared.db import to_libpq

    def table_exists(version):
        with psycopg.connect(to_libpq(database_url)) as connection:
            row = connection.execute(
                "SELECT to_regclass(%s)", (f'online."{project}__users__v{version}"',)
            ).fetchone()
        return row[0] is not None

    _entity(stub, project)
    view = stub.CreateFeatureView(
        pb.CreateFeatureViewRequest(
            parent=f"projects/{project}", feature_view_id="users", feature_view=_view(project)
        )
    ).feature_view
    assert table_exists(1)
    view.fields.add(name="score", value_type=VT.VALUE_TYPE_FLOAT)
    stub.UpdateFeatureView(
        pb.UpdateFeatureViewRequest(
            feature_view=view, update_mask=field_mask_pb2.FieldMask(paths=["fields"])
        )
    )
    assert table_exists(2)
    stub.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=view.name, version=1))
    assert not table_exists(1) and table_exists(2)
    stub.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=view.name))
    assert not table_exists(2)


class _FaultAfterTable:
    """The real online store, with a fault injected right after the online table of view
    `fail_on` is created: the definitions and the other tables are written by then."""

    def __init__(self, store, fail_on):
        self._store = store
        self.fail_on = fail_on

    def ensure_table(self, view, within=None):
        self._store.ensure_table(view, within=within)
        if view.name == self.fail_on:
            raise ConnectionResetError("injected fault between the definitions and their tables")

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_an_apply_faulted_midway_leaves_nothing_behind(registry_engine, database_url, connect):
    """A fault between writing an Apply's resources (and a first view's online table) and
    creating the next view's table: no project, no resource, no table, no change remains, and
    the same Apply then succeeds whole."""
    import psycopg

    from services.registry.server import RegistryDeps, RegistrySettings, create_server
    from shared.db import to_libpq
    from shared.online_store.postgres import PostgresOnlineStore

    project = f"f_{uuid.uuid4().hex[:8]}"
    store = _FaultAfterTable(PostgresOnlineStore(to_libpq(database_url)), fail_on="second")
    settings = RegistrySettings(grpc_port=0, database_url=database_url, triton_addr="127.0.0.1:9")
    running, port = create_server(settings, RegistryDeps(registry_engine, store))
    definitions = [
        *_definitions()[:1],
        pb.Definition(id="first", feature_view=_view(project)),
        pb.Definition(id="second", feature_view=_view(project)),
    ]

    def tables():
        with psycopg.connect(to_libpq(database_url)) as connection:
            rows = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'online' AND tablename LIKE %s",
                (f"{project}__%",),
            ).fetchall()
        return sorted(row[0] for row in rows)

    try:
        with connect(f"127.0.0.1:{port}") as channel:
            faulty = registry_service_pb2_grpc.RegistryServiceStub(channel)
            head = faulty.ListChanges(pb.ListChangesRequest()).head_revision
            error = _error(lambda: _apply(faulty, project, definitions))
            assert error.code() == grpc.StatusCode.INTERNAL
            assert tables() == []
            missing = _error(
                lambda: faulty.GetProject(pb.GetProjectRequest(name=f"projects/{project}"))
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND
            assert faulty.ListChanges(pb.ListChangesRequest()).head_revision == head
            store.fail_on = ""
            assert [action for _, action in _apply(faulty, project, definitions)] == [
                "ACTION_CREATE"
            ] * 4
            assert tables() == [f"{project}__first__v1", f"{project}__second__v1"]
    finally:
        running.stop(0)
        store.close()
