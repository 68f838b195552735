"""One request per root-cause class of bad input the fuzzing found, each with its exact status
and the field its BadRequest names."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.materialization.v1 import materialization_service_pb2_grpc as mgrpc
from recstack.materialization.v1 import materialization_settings_pb2 as settings_pb2
from recstack.registry.v1 import data_source_pb2, project_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.registry.v1 import registry_service_pb2_grpc as rgrpc

from services.recommend.pipeline import _int_key
from shared.errors import InvalidArgument

VIEW = "projects/shop/featureViews/user_profile"
MIN_SECONDS = -62_135_596_800
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _window(start: int, end: int) -> time_window_pb2.TimeWindow:
    return time_window_pb2.TimeWindow(
        start_time=timestamp_pb2.Timestamp(seconds=start),
        end_time=timestamp_pb2.Timestamp(seconds=end),
    )


def _source(format_number: int) -> data_source_pb2.DataSource:
    source = data_source_pb2.DataSource(event_timestamp_column="ts")
    source.file.path = "/data/x.parquet"
    source.file.format = format_number  # type: ignore[assignment]
    return source


def _settings(delay_seconds: int) -> settings_pb2.MaterializationSettings:
    return settings_pb2.MaterializationSettings(
        name=f"{VIEW}/materializationSettings",
        source_delay=duration_pb2.Duration(seconds=delay_seconds),
    )


CASES = [
    # Timestamps outside years 1-9999, or nanos outside [0, 1e9).
    ("materialization", "Backfill", mpb.BackfillRequest(feature_view=VIEW, window=_window(MIN_SECONDS - 1, 0)), "window.start_time"),
    ("materialization", "ExportTrainingSet", mpb.ExportTrainingSetRequest(model_feature_set="projects/shop/modelFeatureSets/s", snapshot_time=timestamp_pb2.Timestamp(seconds=1, nanos=-1), output_path="/x"), "snapshot_time"),
    # A backfill over millennia, an interval listing that ends before it starts.
    ("materialization", "Backfill", mpb.BackfillRequest(feature_view=VIEW, window=_window(MIN_SECONDS, 253_402_300_799)), "window"),
    ("materialization", "ListDataIntervals", mpb.ListDataIntervalsRequest(feature_view=VIEW, store=1, window=_window(2000, 1000)), "window.end_time"),
    # A source_delay of 10,000 years.
    ("materialization", "UpdateMaterializationSettings", mpb.UpdateMaterializationSettingsRequest(settings=_settings(315_576_000_000)), "settings.source_delay"),
    # Enum numbers with no name.
    ("registry", "CreateDataSource", rpb.CreateDataSourceRequest(parent="projects/shop", data_source_id="s", data_source=_source(7)), "data_source.file.format"),
    # NUL characters, which PostgreSQL cannot store.
    ("registry", "CreateProject", rpb.CreateProjectRequest(project_id="nul", project=project_pb2.Project(description="a\x00b")), "project.description"),
    # Integers that overflow their column: versions.
    ("registry", "GetFeatureView", rpb.GetFeatureViewRequest(name=VIEW, version=2**40), "version"),
    ("registry", "GetModelVersion", rpb.GetModelVersionRequest(name="projects/shop/models/m/versions/99999999999"), "name"),
    # Page tokens the server did not issue (or issued for another list).
    ("registry", "ListEntities", rpb.ListEntitiesRequest(parent="projects/shop", page_token="c2hvcA=="), "page_token"),
    ("materialization", "ListJobs", mpb.ListJobsRequest(parent=VIEW, page_token="50"), "page_token"),
    # Partition values that look like dates but are not.
    ("materialization", "PublishTable", mpb.PublishTableRequest(feature_view=VIEW, partition="2026-13-45"), "partition"),
    ("materialization", "PublishTable", mpb.PublishTableRequest(feature_view=VIEW, partition="2026-04-02\n"), "partition"),
    # Ids with a trailing newline (a `$` where a full match was meant).
    ("registry", "CreateProject", rpb.CreateProjectRequest(project_id="shop\n", project=project_pb2.Project()), "project_id"),
]  # fmt: skip
STUBS = {"registry": rgrpc.RegistryServiceStub, "materialization": mgrpc.MaterializationServiceStub}


@pytest.mark.parametrize(("service", "method", "request_", "field"), CASES)
def test_each_class_of_bad_request_is_invalid_argument_naming_its_field(
    service: str,
    method: str,
    request_: object,
    field: str,
    registry_address: str,
    materialization_address: str,
    connect: Callable[[str], grpc.Channel],
) -> None:
    address = {"registry": registry_address, "materialization": materialization_address}[service]
    stub = STUBS[service](connect(address))
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(request_, timeout=10)
    assert raised.value.code() == INVALID, raised.value.details()
    assert _violated_field(raised.value) == field


def test_bytes_that_are_no_request_are_invalid_argument(
    registry_address: str, connect: Callable[[str], grpc.Channel]
) -> None:
    call = connect(registry_address).unary_unary(
        "/recstack.registry.v1.RegistryService/GetProject",
        request_serializer=lambda raw: raw,
        response_deserializer=rpb.GetProjectResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=10)  # field 1 with invalid UTF-8
    assert raised.value.code() == INVALID
    assert _violated_field(raised.value) == "request"


def test_a_numeric_user_id_beyond_int64_is_invalid_argument() -> None:
    assert _int_key(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(InvalidArgument) as raised:
        _int_key("99999999999999999999")
    assert raised.value.field == "user_id"


def _violated_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return bad_request.field_violations[0].field
    raise AssertionError("no BadRequest detail")
