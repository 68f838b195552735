"""Labelled entity rows from a PostgreSQL table, staged as Parquet for the training-set export.

The export joins Parquet with DuckDB; a table is copied once into a local Parquet file,
batch by batch through a server-side cursor, so memory stays bounded by the batch size.
Rows keep the order the server returns them in: a plain `SELECT *` scans the table, which
for an append-only table is insertion order (PostgreSQL promises no order without ORDER BY).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from services.materialization.adapters.source_databases import SourceDatabases
from services.materialization.jobs import PostgresSourceSpec
from shared.errors import InvalidArgument, quoted

DEFAULT_BATCH_ROWS = 50_000

# PostgreSQL type OID → Arrow type; anything else is exported as its text form.
_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    17: pa.binary(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    25: pa.string(),
    700: pa.float32(),
    701: pa.float64(),
    # numeric: labels and scores; an exact decimal would need a precision per column.
    1700: pa.float64(),
    1042: pa.string(),
    1043: pa.string(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}


class PostgresEntityTables:
    """Reads entity tables as POSTGRES sources are read: under the project's own role."""

    def __init__(self, databases: SourceDatabases, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        self._databases = databases
        self._batch_rows = batch_rows

    def to_parquet(self, project: str, table: str, path: str) -> int:
        """Copy every row of `table` (`name` or `schema.name`) to a Parquet file at `path`."""
        query = sql.SQL("SELECT * FROM {}").format(_identifier(table))
        source = PostgresSourceSpec("", table=table)
        try:
            with (
                self._databases.connect(project, source) as guarded,
                guarded.connection.cursor(name="recstack_entity_rows") as cursor,
                guarded.watched(),
            ):
                cursor.execute(query)
                return _copy(cursor, path, self._batch_rows)
        except psycopg.errors.UndefinedTable:
            raise InvalidArgument("entity_table", f"there is no table {quoted(table)}") from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InvalidArgument(
                "entity_table",
                f"{quoted(table)} is not readable by the project's role: {str(exc).strip()[:200]}",
                reason="ENTITY_TABLE_NOT_GRANTED",
            ) from None


def _identifier(table: str) -> sql.Identifier:
    parts = table.split(".")
    if not table or len(parts) > 2 or not all(parts):
        raise InvalidArgument("entity_table", f"{table!r} is not `table` or `schema.table`")
    return sql.Identifier(*parts)


def _copy(cursor: psycopg.ServerCursor[Any], path: str, batch_rows: int) -> int:
    description = cursor.description or []
    schema = pa.schema(
        [(column.name, _ARROW_TYPES.get(column.type_code, pa.string())) for column in description]
    )
    converters = [_converter(field.type) for field in schema]
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        while batch := cursor.fetchmany(batch_rows):
            writer.write_table(_table(batch, schema, converters))
            rows += len(batch)
        if rows == 0:
            writer.write_table(schema.empty_table())
    return rows


def _table(
    batch: Sequence[tuple[Any, ...]],
    schema: pa.Schema,
    converters: Sequence[Callable[[Any], Any] | None],
) -> pa.Table:
    columns = []
    for index, (field, convert) in enumerate(zip(schema, converters, strict=True)):
        values = [row[index] for row in batch]
        if convert is not None:
            values = [None if value is None else convert(value) for value in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _converter(arrow_type: pa.DataType) -> Callable[[Any], Any] | None:
    if pa.types.is_string(arrow_type):
        return str
    if pa.types.is_floating(arrow_type):
        return float
    return None
