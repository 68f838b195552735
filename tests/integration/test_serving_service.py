"""Serving over gRPC with real PostgreSQL: typed round trips, newest event wins, bad batches."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
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
def registry(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def serving(serving_address, connect):
    with connect(serving_address) as channel:
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
    _create_view(registry, project_id, "profile", fields)
    return project_id


def _create_view(registry, project, view_id, fields, ttl_seconds=3600):
    return registry.CreateFeatureView(
        rpb.CreateFeatureViewRequest(
            parent=f"projects/{project}",
            feature_view_id=view_id,
            feature_view=FV(
                entity="user",
                type=FV.TYPE_REAL_TIME,
                ttl=duration_pb2.Duration(seconds=ttl_seconds),
                fields=[feature_view_pb2.FeatureField(name=n, value_type=t) for n, t in fields],
            ),
        )
    ).feature_view


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
    now = datetime.now(UTC).replace(microsecond=123456)
    row = _row(
        1,
        now,
        age=value_pb2.Value(double_value=0.1 + 0.2),
        name=value_pb2.Value(string_value="Ærø 日本"),
        embedding=value_pb2.Value(float_list_value=value_pb2.FloatList(values=[0.5, -1.25])),
        clicks=value_pb2.Value(int64_list_value=value_pb2.Int64List(values=[3, -(2**63), 2])),
        prefs=value_pb2.Value(
            string_double_map_value=value_pb2.StringDoubleMap(values={"shoes": 0.75})
        ),
        active=value_pb2.Value(bool_value=False),
    )
    written = serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[row])
    )
    assert written.rows_written == 1
    response = _read(serving, project, [1, 2])
    columns = dict(zip(response.feature_names, response.columns, strict=True))
    for name, value in row.values.items():
        if name != "user_id":
            assert columns[f"profile:{name}"].values[0] == value, name
            assert columns[f"profile:{name}"].values[1].WhichOneof("kind") is None, name
    assert list(columns["profile:age"].statuses) == [PRESENT, NOT_FOUND]
    assert columns["profile:age"].event_times[0].ToDatetime(tzinfo=UTC) == now
    assert columns["profile:age"].event_times[1] == timestamp_pb2.Timestamp()


def test_every_registry_type_round_trips(serving, registry, project):
    samples = {
        VT.VALUE_TYPE_INT64: value_pb2.Value(int64_value=-(2**63)),
        VT.VALUE_TYPE_FLOAT: value_pb2.Value(float_value=-1.25),
        VT.VALUE_TYPE_DOUBLE: value_pb2.Value(double_value=1e-300),
        VT.VALUE_TYPE_STRING: value_pb2.Value(string_value=""),
        VT.VALUE_TYPE_BOOL: value_pb2.Value(bool_value=True),
        VT.VALUE_TYPE_BYTES: value_pb2.Value(bytes_value=b"\x00\xff"),
        VT.VALUE_TYPE_FLOAT_LIST: value_pb2.Value(
            float_list_value=value_pb2.FloatList(values=[0.5, 3.0])
        ),
        VT.VALUE_TYPE_DOUBLE_LIST: value_pb2.Value(
            double_list_value=value_pb2.DoubleList(values=[0.1, -2.5])
        ),
        VT.VALUE_TYPE_INT64_LIST: value_pb2.Value(
            int64_list_value=value_pb2.Int64List(values=[2**62, -1])
        ),
        VT.VALUE_TYPE_STRING_LIST: value_pb2.Value(
            string_list_value=value_pb2.StringList(values=["a", "β", ""])
        ),
        VT.VALUE_TYPE_STRING_STRING_MAP: value_pb2.Value(
            string_string_map_value=value_pb2.StringStringMap(values={"k": "v"})
        ),
        VT.VALUE_TYPE_STRING_DOUBLE_MAP: value_pb2.Value(
            string_double_map_value=value_pb2.StringDoubleMap(values={"x": -0.5})
        ),
    }
    fields = [("user_id", VT.VALUE_TYPE_INT64)]
    fields += [(f"f{value_type}", value_type) for value_type in samples]
    _create_view(registry, project, "every_type", fields)
    now = datetime.now(UTC)
    row = _row(1, now, **{f"f{value_type}": value for value_type, value in samples.items()})
    serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="every_type", rows=[row])
    )
    response = _read(serving, project, [1], ["every_type:*"])
    for name, column in zip(response.feature_names, response.columns, strict=True):
        assert column.values[0] == row.values[name.split(":")[1]], name


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


def _write(serving, project, rows, view="profile", version=0):
    return serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view=view, version=version, rows=rows)
    )


def _doubles(column):
    return [
        value.double_value if value.HasField("double_value") else None for value in column.values
    ]


def test_out_of_order_events_in_one_batch_and_across_batches(serving, project):
    now = datetime.now(UTC)
    batch = [
        _row(3, now - timedelta(seconds=s), age=value_pb2.Value(double_value=s)) for s in (5, 1, 9)
    ]
    assert _write(serving, project, batch).rows_written == 1
    older = _write(
        serving, project, [_row(3, now - timedelta(seconds=2), age=value_pb2.Value(double_value=2))]
    )
    assert (older.rows_written, older.rows_stale) == (0, 1)
    assert _doubles(_read(serving, project, [3], ["profile:age"]).columns[0]) == [1.0]


def test_concurrent_writers_converge_on_the_newest_event(
    serving, serving_address, project, connect
):
    base = datetime.now(UTC) - timedelta(minutes=10)
    keys, writers, rounds = 10, 4, 10

    def write(writer):
        with connect(serving_address) as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            steps = list(range(rounds))
            random.Random(writer).shuffle(steps)
            for step in steps:
                second = writer + step * writers
                rows = [
                    _row(
                        k,
                        base + timedelta(seconds=second),
                        age=value_pb2.Value(double_value=second),
                    )
                    for k in range(keys)
                ]
                _write(stub, project, rows)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    column = _read(serving, project, list(range(keys)), ["profile:age"]).columns[0]
    newest = writers * rounds - 1
    assert _doubles(column) == [float(newest)] * keys
    assert {stamp.ToDatetime(tzinfo=UTC) for stamp in column.event_times} == {
        base + timedelta(seconds=newest)
    }


def test_read_of_1000_keys_half_missing(serving, project):
    now = datetime.now(UTC)
    rows = [_row(k, now, age=value_pb2.Value(double_value=k)) for k in range(0, 1000, 2)]
    _write(serving, project, rows)
    keys = list(range(999, -1, -1))
    response = _read(serving, project, keys)
    assert len(response.columns) == 6
    age = dict(zip(response.feature_names, response.columns, strict=True))["profile:age"]
    assert list(age.statuses) == [NOT_FOUND if k % 2 else PRESENT for k in keys]
    assert _doubles(age) == [None if k % 2 else float(k) for k in keys]


def test_a_changed_view_serves_the_requested_version(serving, registry, project):
    name = f"projects/{project}/featureViews/profile"
    v1 = registry.GetFeatureView(rpb.GetFeatureViewRequest(name=name)).feature_view
    v1.fields.add(name="score", value_type=VT.VALUE_TYPE_DOUBLE)
    v2 = registry.UpdateFeatureView(
        rpb.UpdateFeatureViewRequest(
            feature_view=v1, update_mask=field_mask_pb2.FieldMask(paths=["fields"])
        )
    ).feature_view
    assert v2.version == 2
    now = datetime.now(UTC)
    _write(serving, project, [_row(1, now, age=value_pb2.Value(double_value=1.0))], version=1)
    row = _row(
        1, now, age=value_pb2.Value(double_value=2.0), score=value_pb2.Value(double_value=9.0)
    )
    _write(serving, project, [row])  # version 0: the latest, 2
    response = _read(
        serving, project, [1], ["profile@1:age", "profile@2:age", "profile:score", "profile:age"]
    )
    assert list(response.feature_names) == [
        "profile@1:age",
        "profile@2:age",
        "profile:score",
        "profile:age",
    ]
    assert [_doubles(column) for column in response.columns] == [[1.0], [2.0], [9.0], [2.0]]
    with pytest.raises(grpc.RpcError) as caught:
        _read(serving, project, [1], ["profile@1:score"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_push_features_acknowledges_every_batch(serving, project):
    now = datetime.now(UTC)

    def batches():
        for batch in range(3):
            rows = [
                _row(
                    100 + k, now + timedelta(seconds=batch), age=value_pb2.Value(double_value=batch)
                )
                for k in range(5)
            ]
            yield spb.PushFeaturesRequest(project=project, feature_view="profile", rows=rows)
        stale = [_row(100, now - timedelta(hours=1), age=value_pb2.Value(double_value=-1))]
        yield spb.PushFeaturesRequest(project=project, feature_view="profile", rows=stale)

    response = serving.PushFeatures(batches())
    assert (response.batches, response.rows_written, response.rows_stale) == (4, 15, 1)
    assert _doubles(_read(serving, project, [100, 104], ["profile:age"]).columns[0]) == [2.0, 2.0]


def test_push_stops_at_a_bad_batch_and_keeps_the_acknowledged_ones(serving, project):
    now = datetime.now(UTC)
    good = spb.PushFeaturesRequest(
        project=project,
        feature_view="profile",
        rows=[_row(200, now, age=value_pb2.Value(double_value=1.0))],
    )
    bad = spb.PushFeaturesRequest(
        project=project,
        feature_view="profile",
        rows=[_row(201, now, age=value_pb2.Value(string_value="x"))],
    )
    with pytest.raises(grpc.RpcError) as caught:
        serving.PushFeatures(iter([good, bad]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[0].values.age" in caught.value.details()
    statuses = _read(serving, project, [200, 201], ["profile:age"]).columns[0].statuses
    assert list(statuses) == [PRESENT, NOT_FOUND]
