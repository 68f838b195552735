"""Registry definitions become the engine's source specs and transformations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from recstack.registry.v1 import data_source_pb2, feature_view_pb2

from services.materialization.jobs import (
    Aggregation,
    AggregationFunction,
    FileSourceSpec,
    PostgresSourceSpec,
    SqlTransformation,
    WindowedAggregations,
)
from services.materialization.runner import _source_spec, _transformation
from shared.errors import FailedPrecondition

DataSource = data_source_pb2.DataSource


def test_file_sources_keep_their_glob_partitions_and_format():
    source = DataSource(
        event_timestamp_column="ts",
        file=data_source_pb2.FileSource(
            path="s3://bucket/events/ds=*/part-*.csv",
            format=data_source_pb2.FileSource.FORMAT_CSV,
            partition_column="ds",
            partition_format="%Y%m%d",
        ),
    )
    assert _source_spec("events", source) == FileSourceSpec(
        "s3://bucket/events/ds=*/part-*.csv", "CSV", "ts", "ds", "%Y%m%d"
    )


def test_postgres_sources_keep_table_query_and_url():
    source = DataSource(
        event_timestamp_column="created_at",
        postgres=data_source_pb2.PostgresSource(query="SELECT * FROM orders"),
    )
    assert _source_spec("orders", source) == PostgresSourceSpec(
        "created_at", query="SELECT * FROM orders"
    )


def test_push_sources_have_nothing_to_materialize():
    source = DataSource(push=data_source_pb2.PushSource())
    with pytest.raises(FailedPrecondition, match="PushFeatures"):
        _source_spec("live", source)


def test_transformations_become_domain_objects():
    assert _transformation(feature_view_pb2.Transformation()) is None
    sql = feature_view_pb2.Transformation(sql="SELECT * FROM source")
    assert _transformation(sql) == SqlTransformation("SELECT * FROM source")
    message = feature_view_pb2.Transformation(
        aggregations=feature_view_pb2.Aggregations(
            aggregations=[
                feature_view_pb2.Aggregation(
                    function=feature_view_pb2.Aggregation.FUNCTION_LAST_N,
                    column="item_id",
                    window=Duration(seconds=86400),
                    output="last_items",
                    n=5,
                )
            ]
        )
    )
    assert _transformation(message) == WindowedAggregations(
        (Aggregation(AggregationFunction.LAST_N, "item_id", timedelta(days=1), "last_items", 5),)
    )


@pytest.mark.parametrize(
    "function",
    [
        value
        for value in feature_view_pb2.Aggregation.Function.values()
        if value != feature_view_pb2.Aggregation.FUNCTION_UNSPECIFIED
    ],
)
def test_every_aggregation_function_of_the_contract_has_a_domain_function(function):
    message = feature_view_pb2.Transformation(
        aggregations=feature_view_pb2.Aggregations(
            aggregations=[
                feature_view_pb2.Aggregation(
                    function=function, column="genres", window=Duration(seconds=60), output="out"
                )
            ]
        )
    )
    (aggregation,) = _transformation(message).aggregations
    name = feature_view_pb2.Aggregation.Function.Name(function)
    assert aggregation.function == AggregationFunction[name.removeprefix("FUNCTION_")]
