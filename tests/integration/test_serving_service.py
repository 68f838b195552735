"""Serving over gRPC with real PostgreSQL: typed round trips, newest event wins, bad batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import (
    registry_service_pb2 as rpb,
)
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
PRESENT, NOT_FOUND, OUTSIDE_TTL = (
    spb.FEATURE_STATUS_PRESENT,
    spb.FEATURE_STATUS_NOT_FOUND,
    spb.FEATURE_STATUS_OUTSIDE_TTL,
)


@pytest.fixture(scope="module")
def registry(registry_address):
    with grpc.insecure_channel(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def serving(serving_address):
    with grpc.insecure_channel(serving_address) as channel:
        yield serving_service_pb2_grpc.FeatureServingServiceStub(channel)


@pytest.fixture
def project(registry):
    project_id = f"s_{uuid.uuid4().hex[:8]}"
    parent = f"projects/{project_id}"
    registry.CreateProject(
        rpb.CreateProjectRequest(project_id=project_id, project=project_pb2.Project())
    )
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=parent,
            entity_id="user",
            entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
        )
    )
    fields = [
        ("user_id", VT.VALUE_TYPE_INT64),
        ("age", VT.VALUE_TYPE_DOUBLE),
        ("name", VT.VALUE_TYPE_STRING),
        ("embedding", VT.VALUE_TYPE_FLOAT_LIST),
        ("clicks", VT.VALUE_TYPE_INT64_LIST),
        ("prefs", VT.VALUE_TYPE_STRING_DOUBLE_MAP),
        ("active", VT.VALUE_TYPE_BOOL),
    ]
    registry.CreateFeatureView(
        rpb.CreateFeatureViewRequest(
            parent=parent,
            feature_view_id="profile",
            feature_view=FV(
                entity="user",
                type=FV.TYPE_REAL_TIME,
                ttl=duration_pb2.Duration(seconds=3600),
                fields=[feature_view_pb2.FeatureField(name=n, value_type=t) for n, t in fields],
            ),
        )
    )
    return project_id


def _row(user_id, event_time, **values):
    row = spb.FeatureRow(values={"user_id": value_pb2.Value(int64_value=user_id)})
    row.event_time.FromDatetime(event_time)
    for name, value in values.items():
        row.values[name].CopyFrom(value)
    return row


def _read(serving, project, keys, features=("profile:*",)):
    return serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=list(features),
            entity_keys=[value_pb2.Value(int64_value=key) for key in keys],
        )
    )


def test_every_type_round_trips(serving, project):
    now = datetime.now(UTC)
    row = _row(
        1,
        now,
        age=value_pb2.Value(double_value=31.5),
        name=value_pb2.Value(string_value="ada"),
        embedding=value_pb2.Value(float_list_value=value_pb2.FloatList(values=[0.5, -1.25])),
        clicks=value_pb2.Value(int64_list_value=value_pb2.Int64List(values=[3, 1, 2])),
        prefs=value_pb2.Value(
            string_double_map_value=value_pb2.StringDoubleMap(values={"shoes": 0.75})
        ),
        active=value_pb2.Value(bool_value=True),
    )
    written = serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[row])
    )
    assert written.rows_written == 1
    response = _read(serving, project, [1, 2])
    columns = dict(zip(response.feature_names, response.columns, strict=True))
    assert columns["profile:age"].values[0].double_value == 31.5
    assert columns["profile:name"].values[0].string_value == "ada"
    assert list(columns["profile:embedding"].values[0].float_list_value.values) == [0.5, -1.25]
    assert list(columns["profile:clicks"].values[0].int64_list_value.values) == [3, 1, 2]
    assert dict(columns["profile:prefs"].values[0].string_double_map_value.values) == {
        "shoes": 0.75
    }
    assert columns["profile:active"].values[0].bool_value is True
    assert list(columns["profile:age"].statuses) == [PRESENT, NOT_FOUND]
    assert columns["profile:age"].values[1].WhichOneof("kind") is None


def test_older_event_never_overwrites_newer(serving, project):
    now = datetime.now(UTC)
    newer = _row(7, now, age=value_pb2.Value(double_value=2.0))
    older = _row(7, now - timedelta(minutes=5), age=value_pb2.Value(double_value=1.0))
    serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[newer])
    )
    result = serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[older])
    )
    assert (result.rows_written, result.rows_stale) == (0, 1)
    assert _read(serving, project, [7], ["profile:age"]).columns[0].values[0].double_value == 2.0


def test_value_older_than_ttl_is_outside_ttl(serving, project):
    stale = _row(9, datetime.now(UTC) - timedelta(hours=2), age=value_pb2.Value(double_value=5.0))
    serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[stale])
    )
    column = _read(serving, project, [9], ["profile:age"]).columns[0]
    assert list(column.statuses) == [OUTSIDE_TTL]


def test_batch_with_one_bad_row_writes_nothing(serving, project):
    now = datetime.now(UTC)
    good = _row(20, now, age=value_pb2.Value(double_value=1.0))
    bad = _row(21, now, age=value_pb2.Value(string_value="old"))
    with pytest.raises(grpc.RpcError) as caught:
        serving.WriteFeatures(
            spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[good, bad])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[1].values.age" in caught.value.details()
    assert list(_read(serving, project, [20], ["profile:age"]).columns[0].statuses) == [NOT_FOUND]


@pytest.mark.parametrize(
    ("features", "keys", "field"),
    [
        ([], [1], "features"),
        (["profile"], [1], "features[0]"),
        (["profile:nope"], [1], "features"),
        (["profile:age"], [], "entity_keys"),
        (["profile:age"], list(range(1001)), "entity_keys"),
    ],
)
def test_bad_reads_are_invalid_argument(serving, project, features, keys, field):
    with pytest.raises(grpc.RpcError) as caught:
        _read(serving, project, keys, features)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)


def test_unknown_view_is_not_found(serving, project):
    with pytest.raises(grpc.RpcError) as caught:
        _read(serving, project, [1], ["nope:age"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
