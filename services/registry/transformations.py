"""Apply-time checks of a feature view's transformation (DuckDB SQL or windowed aggregations).

SQL must parse as one SELECT. When the source's columns are knowable here (a PUSH schema, or
a FILE source readable from this process), the query is also bound against an empty relation
`source` of those columns, and its output must be exactly the declared fields (produced
fields excepted) plus the event timestamp column.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from recstack.registry.v1 import data_source_pb2, feature_view_pb2

from shared.errors import InvalidArgument, quoted
from shared.values import TYPES, VT

Aggregation = feature_view_pb2.Aggregation
QUERY_NODES = ("SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE")
# Output field types an aggregate can only be stored as; the others follow their column.
OUTPUT_TYPES = {Aggregation.FUNCTION_COUNT_BY_VALUE: VT.VALUE_TYPE_STRING_DOUBLE_MAP}


def validate(view: feature_view_pb2.FeatureView, source: data_source_pb2.DataSource | None) -> None:
    kind = view.transformation.WhichOneof("kind")
    if kind == "sql":
        _validate_sql(view, source)
    elif kind == "aggregations":
        _validate_aggregations(view)


def _declared_outputs(view: feature_view_pb2.FeatureView) -> set[str]:
    return {field.name for field in view.fields if not field.HasField("production")}


def _validate_sql(
    view: feature_view_pb2.FeatureView, source: data_source_pb2.DataSource | None
) -> None:
    field = "feature_view.transformation.sql"
    sql = view.transformation.sql.strip().rstrip(";")
    if not sql:
        raise InvalidArgument(field, "is empty")
    parsed = _parse(sql)
    if parsed.get("error"):
        raise InvalidArgument(field, f"does not parse: {parsed.get('error_message')}")
    statements = parsed.get("statements", [])
    if len(statements) != 1 or statements[0]["node"]["type"] not in QUERY_NODES:
        raise InvalidArgument(field, "must be exactly one SELECT statement")
    schema = _source_schema(source)
    if schema is None:
        return
    columns = _output_columns(sql, schema, field)
    expected = _declared_outputs(view) | {source.event_timestamp_column}  # type: ignore[union-attr]
    if set(columns) != expected:
        missing, extra = sorted(expected - set(columns)), sorted(set(columns) - expected)
        raise InvalidArgument(
            field,
            f"output columns must be the declared fields plus the event timestamp column; "
            f"missing {missing}, unexpected {extra}",
        )


def _connect() -> duckdb.DuckDBPyConnection:
    # Binding may read files (read_csv, read_parquet…): user SQL gets no external access here.
    return duckdb.connect(config={"enable_external_access": False})


def _parse(sql: str) -> dict[str, object]:
    with _connect() as connection:
        row = connection.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    assert row is not None
    return json.loads(row[0])


def _output_columns(sql: str, schema: pa.Schema, field: str) -> list[str]:
    connection = _connect()
    try:
        connection.register("source", schema.empty_table())
        return [row[0] for row in connection.execute(f"DESCRIBE {sql}").fetchall()]
    except duckdb.Error as exc:
        raise InvalidArgument(field, f"does not bind against the source: {exc}") from None
    finally:
        connection.close()


def _source_schema(source: data_source_pb2.DataSource | None) -> pa.Schema | None:
    """The source's columns when this process can know them; None means "check later"."""
    if source is None:
        return None
    if source.WhichOneof("kind") == "push":
        return pa.schema([(f.name, TYPES[f.value_type].arrow) for f in source.push.schema])
    if source.WhichOneof("kind") == "file" and _is_local(source.file.path):
        file_format = "csv" if source.file.format == source.file.FORMAT_CSV else "parquet"
        try:
            dataset = ds.dataset(source.file.path, format=file_format)
            # The path was checked against the project's roots when the source was written;
            # a file reached through a symbolic link may lie anywhere: none is opened here.
            if any(_through_link(file) for file in dataset.files):
                return None
            return dataset.schema
        except (OSError, pa.ArrowException):
            return None
    return None


def _is_local(path: str) -> bool:
    # Only absolute paths: a relative one is relative to the project's first file root, which
    # materialization resolves, not this process's working directory.
    return (
        Path(path).is_absolute()
        and not any(char in path for char in "*?[")
        and not _through_link(path)
        and Path(path).exists()
    )


def _through_link(path: str) -> bool:
    return Path(path).resolve() != Path(path).absolute()


def _validate_aggregations(view: feature_view_pb2.FeatureView) -> None:
    aggregations = view.transformation.aggregations.aggregations
    base = "feature_view.transformation.aggregations"
    if not aggregations:
        raise InvalidArgument(base, "declare at least one aggregation")
    outputs: set[str] = set()
    for index, aggregation in enumerate(aggregations):
        path = f"{base}[{index}]"
        if aggregation.function == Aggregation.FUNCTION_UNSPECIFIED:
            raise InvalidArgument(f"{path}.function", "must be a FUNCTION_* value")
        if not aggregation.column:
            raise InvalidArgument(f"{path}.column", "is required")
        if aggregation.window.ToTimedelta().total_seconds() <= 0:
            raise InvalidArgument(f"{path}.window", "must be positive, e.g. 86400s for 1d")
        if aggregation.function == Aggregation.FUNCTION_LAST_N and aggregation.n <= 0:
            raise InvalidArgument(f"{path}.n", "LAST_N needs n of at least 1")
        counts_values = aggregation.function == Aggregation.FUNCTION_COUNT_BY_VALUE
        if counts_values and aggregation.column == "*":
            raise InvalidArgument(
                f"{path}.column", "COUNT_BY_VALUE counts the values of one column, not `*`"
            )
        if aggregation.output in outputs:
            raise InvalidArgument(
                f"{path}.output", f"duplicate output {quoted(aggregation.output)}"
            )
        outputs.add(aggregation.output)
    features = _declared_outputs(view)
    undeclared = sorted(outputs - features)
    if undeclared:
        raise InvalidArgument(base, f"outputs {undeclared} are not fields of the view")
    _check_output_types(view, base)


def _check_output_types(view: feature_view_pb2.FeatureView, base: str) -> None:
    declared = {field.name: field.value_type for field in view.fields}
    for index, aggregation in enumerate(view.transformation.aggregations.aggregations):
        required = OUTPUT_TYPES.get(aggregation.function)
        if required is not None and declared[aggregation.output] != required:
            function = Aggregation.Function.Name(aggregation.function)
            raise InvalidArgument(
                f"{base}[{index}].output",
                f"{function} yields {VT.Name(required)}: declare field {aggregation.output!r} "
                f"with that type, not {VT.Name(declared[aggregation.output])}",
            )
