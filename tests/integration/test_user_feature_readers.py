"""One contract for every `UserFeatureReader`: the serving service over gRPC and the online
store read in-process must return the same values for the same refs, with serving's rules for
missing rows, TTL and unknown features."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from services.recommend.adapters.online_user_features import OnlineStoreUserFeatures
from services.recommend.adapters.registry import RegistryDefinitions
from services.recommend.adapters.serving_client import ServingUserFeatures
from services.recommend.user_features import UserFeatureReader
from shared.db import to_libpq
from shared.errors import FailedPrecondition
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
INT64 = VT.VALUE_TYPE_INT64
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def project(registry_address: str, serving_address: str, connect) -> str:
    """Users 1 (fresh rows in both views) and 2 (a profile older than its 1 h TTL)."""
    registry = registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address))
    serving = serving_service_pb2_grpc.FeatureServingServiceStub(connect(serving_address))
    project_id = f"u_{uuid.uuid4().hex[:8]}"
    parent = f"projects/{project_id}"
    registry.CreateProject(
        rpb.CreateProjectRequest(project_id=project_id, project=project_pb2.Project())
    )
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=parent,
            entity_id="user",
            entity=entity_pb2.Entity(join_key="user_id", key_type=INT64),
        )
    )
    views = {
        "profile": (3600, [("age", VT.VALUE_TYPE_DOUBLE), ("city", VT.VALUE_TYPE_STRING)]),
        "history": (
            0,
            [("recent", VT.VALUE_TYPE_INT64_LIST), ("genres", VT.VALUE_TYPE_STRING_DOUBLE_MAP)],
        ),
    }
    for view_id, (ttl, fields) in views.items():
        registry.CreateFeatureView(
            rpb.CreateFeatureViewRequest(
                parent=parent,
                feature_view_id=view_id,
                feature_view=FV(
                    entity="user",
                    type=FV.TYPE_REAL_TIME,
                    ttl=duration_pb2.Duration(seconds=ttl),
                    fields=[
                        feature_view_pb2.FeatureField(name=name, value_type=value_type)
                        for name, value_type in [("user_id", INT64), *fields]
                    ],
                ),
            )
        )
    profile = {"age": _double(31.5), "city": value_pb2.Value(string_value="Zürich")}
    _write(serving, project_id, "profile", 1, NOW, profile)
    stale = {"age": _double(40.0), "city": value_pb2.Value(string_value="Oslo")}
    _write(serving, project_id, "profile", 2, NOW - timedelta(hours=2), stale)
    genres = value_pb2.StringDoubleMap(values={"Drama": 2.0})
    history = {
        "recent": value_pb2.Value(int64_list_value=value_pb2.Int64List(values=[7, 3, 9])),
        "genres": value_pb2.Value(string_double_map_value=genres),
    }
    _write(serving, project_id, "history", 1, NOW, history)
    return project_id


def _double(value: float) -> value_pb2.Value:
    return value_pb2.Value(double_value=value)


def _write(serving, project: str, view: str, user_id: int, event_time: datetime, values) -> None:
    row = spb.FeatureRow(values={"user_id": value_pb2.Value(int64_value=user_id), **values})
    row.event_time.FromDatetime(event_time)
    serving.WriteFeatures(spb.WriteFeaturesRequest(project=project, feature_view=view, rows=[row]))


@pytest.fixture(scope="module", params=["serving", "online_store"])
def reader(
    request: pytest.FixtureRequest,
    serving_address: str,
    registry_address: str,
    database_url: str,
    client_settings,
) -> Iterator[UserFeatureReader]:
    if request.param == "serving":
        serving = ServingUserFeatures(serving_address, client=client_settings)
        yield serving
        serving.close()
        return
    store = PostgresOnlineStore(to_libpq(database_url))
    registry = RegistryDefinitions(
        RegistryClient(registry_address, client=client_settings, refresh_seconds=0.0)
    )
    yield OnlineStoreUserFeatures(store, registry, plan_seconds=0.0)
    registry.close()
    store.close()


REFS = ["profile:age", "profile:city", "history:recent", "history:genres"]


def test_reads_every_view_of_a_user_with_typed_values(reader, project):
    assert reader.read(project, REFS, 1, INT64) == {
        "profile:age": 31.5,
        "profile:city": "Zürich",
        "history:recent": [7, 3, 9],
        "history:genres": {"Drama": 2.0},
    }


def test_a_row_outside_the_ttl_or_missing_reads_as_none(reader, project):
    # User 2's profile is two hours old with a one-hour TTL; it has no history row at all.
    assert reader.read(project, REFS, 2, INT64) == dict.fromkeys(REFS)
    assert reader.read(project, REFS, 404, INT64) == dict.fromkeys(REFS)


def test_keeps_the_callers_order_and_subset(reader, project):
    assert list(reader.read(project, ["history:recent", "profile:age"], 1, INT64)) == [
        "history:recent",
        "profile:age",
    ]


@pytest.mark.parametrize(
    "refs",
    [["profile:missing"], ["nowhere:age"], ["profile:age", "not a ref"]],
    ids=["unknown feature", "unknown view", "malformed ref"],
)
def test_refs_the_registry_lacks_are_a_misconfigured_scene(reader, project, refs):
    with pytest.raises(FailedPrecondition) as raised:
        reader.read(project, refs, 1, INT64)
    assert raised.value.reason == "USER_FEATURES_INVALID"


def test_a_key_of_another_type_is_a_misconfigured_scene(reader, project):
    with pytest.raises(FailedPrecondition):
        reader.read(project, ["profile:age"], "1", VT.VALUE_TYPE_STRING)
