"""The cached registry client: no registry call per read, and changes seen via the change log."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as pb

from shared.registry_client import RegistryClient

VT = value_pb2.ValueType


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self):
        self.calls: list[str] = []

    def intercept_unary_unary(self, continuation, details, request):
        self.calls.append(details.method.rsplit("/", 1)[1])
        return continuation(details, request)


@pytest.fixture
def project(registry_address, connect):
    project_id = f"c_{uuid.uuid4().hex[:8]}"
    with connect(registry_address) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        stub.CreateProject(
            pb.CreateProjectRequest(project_id=project_id, project=project_pb2.Project())
        )
        stub.CreateEntity(
            pb.CreateEntityRequest(
                parent=f"projects/{project_id}",
                entity_id="user",
                entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
            )
        )
        stub.CreateFeatureView(
            pb.CreateFeatureViewRequest(
                parent=f"projects/{project_id}",
                feature_view_id="profile",
                feature_view=feature_view_pb2.FeatureView(
                    entity="user",
                    type=feature_view_pb2.FeatureView.TYPE_REAL_TIME,
                    fields=[
                        feature_view_pb2.FeatureField(
                            name="user_id", value_type=VT.VALUE_TYPE_INT64
                        ),
                        feature_view_pb2.FeatureField(name="age", value_type=VT.VALUE_TYPE_DOUBLE),
                    ],
                ),
            )
        )
        yield project_id, stub


def _client(connect, address, refresh_seconds):
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(connect(address), counter)
    return RegistryClient(address, refresh_seconds=refresh_seconds, channel=channel), counter


def _add_field(stub, project_id):
    name = f"projects/{project_id}/featureViews/profile"
    view = stub.GetFeatureView(pb.GetFeatureViewRequest(name=name)).feature_view
    view.fields.add(name="score", value_type=VT.VALUE_TYPE_FLOAT)
    stub.UpdateFeatureView(
        pb.UpdateFeatureViewRequest(
            feature_view=view, update_mask=field_mask_pb2.FieldMask(paths=["fields"])
        )
    )


def test_repeated_reads_make_no_registry_call(registry_address, project, connect):
    project_id, _ = project
    client, counter = _client(connect, registry_address, refresh_seconds=3600)
    first = client.view_schema(project_id, "profile")
    calls = len(counter.calls)
    for _ in range(50):
        assert client.view_schema(project_id, "profile") == first
    assert len(counter.calls) == calls
    client.close()


def test_a_change_is_seen_at_the_next_refresh_and_only_then(registry_address, project, connect):
    project_id, stub = project
    stale, _ = _client(connect, registry_address, refresh_seconds=3600)
    fresh, counter = _client(connect, registry_address, refresh_seconds=0)
    assert stale.view_schema(project_id, "profile").version == 1
    assert fresh.view_schema(project_id, "profile").version == 1
    _add_field(stub, project_id)
    assert stale.view_schema(project_id, "profile").version == 1
    schema = fresh.view_schema(project_id, "profile")
    assert schema.version == 2
    assert [feature.name for feature in schema.features] == ["age", "score"]
    assert "ListChanges" in counter.calls
    stale.close()
    fresh.close()


def test_pinned_versions_stay_readable(registry_address, project, connect):
    project_id, stub = project
    client, _ = _client(connect, registry_address, refresh_seconds=0)
    _add_field(stub, project_id)
    assert client.view_schema(project_id, "profile", version=1).version == 1
    assert client.view_schema(project_id, "profile").version == 2
    client.close()
