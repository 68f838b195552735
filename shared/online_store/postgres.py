"""PostgreSQL online store: one table per feature-view version in schema `online`.

Typed columns (arrays as PostgreSQL arrays, maps as jsonb) keep the layout inspectable with
SQL. Writes go through binary COPY into a staging table and one upsert, so a batch is atomic
and large loads run near COPY speed. Reads of several views are one statement.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.errors import Unavailable
from shared.feature_views import ViewSchema
from shared.online_store.base import Row, ViewColumns, WriteResult
from shared.request_context import seconds_remaining
from shared.values import TYPES

SCHEMA = "online"
POOL_WAIT_SECONDS = 5.0


def _pg_type(value_type: int) -> str:
    return TYPES[value_type].postgres


class PostgresOnlineStore:
    def __init__(self, conninfo: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=True,
            name="online-store",
        )
        self._ensured: set[str] = set()
        self._lock = threading.Lock()
        self._read_statements: dict[tuple[Any, ...], sql.Composed] = {}
        with self._connection() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))

    def close(self) -> None:
        self._pool.close()

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    # --- DDL -----------------------------------------------------------------------------

    def ensure_table(self, view: ViewSchema) -> None:
        if view.table_name in self._ensured:
            return
        columns = [
            sql.SQL("{} {} PRIMARY KEY").format(
                sql.Identifier(view.join_key), sql.SQL(_pg_type(view.key_type))
            ),
            *(
                sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(_pg_type(f.value_type)))
                for f in view.features
            ),
            sql.SQL("event_ts timestamptz NOT NULL"),
            sql.SQL("written_ts timestamptz NOT NULL DEFAULT now()"),
        ]
        statement = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            self._table(view), sql.SQL(", ").join(columns)
        )
        # Concurrent first writers race on the catalog; the advisory lock serialises them.
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (view.table_name,))
            conn.execute(statement)
        with self._lock:
            self._ensured.add(view.table_name)

    def drop_table(self, view: ViewSchema) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._table(view)))
        with self._lock:
            self._ensured.discard(view.table_name)

    # --- writes --------------------------------------------------------------------------

    def write(self, view: ViewSchema, rows: Sequence[Row]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        self.ensure_table(view)
        names = [view.join_key, *(f.name for f in view.features), "event_ts"]
        types = [
            _pg_type(view.key_type),
            *(_pg_type(f.value_type) for f in view.features),
            "timestamptz",
        ]
        json_columns = [i for i, pg_type in enumerate(types) if pg_type == "jsonb"]
        staging = sql.Identifier(f"staging_{view.table_name}"[:63])
        with self._connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
                ).format(staging, sql.SQL(", ").join(map(sql.Identifier, names)), self._table(view))
            )
            with conn.cursor().copy(
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    staging, sql.SQL(", ").join(map(sql.Identifier, names))
                )
            ) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(_wrap_json(row, json_columns) if json_columns else row)
            written = conn.execute(self._upsert(view, names, staging)).rowcount
        return WriteResult(written=written, stale=len(rows) - written)

    def _upsert(self, view: ViewSchema, names: list[str], staging: sql.Identifier) -> sql.Composed:
        key = sql.Identifier(view.join_key)
        columns = sql.SQL(", ").join(map(sql.Identifier, names))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
            for name in [*names[1:], "written_ts"]
        )
        # DISTINCT ON keeps each key's newest row of the batch; the WHERE keeps the stored
        # row when it is newer, so out-of-order and concurrent writers converge on the newest.
        return sql.SQL(
            "INSERT INTO {table} AS t ({columns}, written_ts) "
            "SELECT DISTINCT ON ({key}) {columns}, clock_timestamp() FROM {staging} "
            "ORDER BY {key}, event_ts DESC "
            "ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE t.event_ts <= EXCLUDED.event_ts"
        ).format(
            table=self._table(view), columns=columns, key=key, staging=staging, updates=updates
        )

    # --- reads ---------------------------------------------------------------------------

    def read(
        self, requests: Sequence[tuple[ViewSchema, Sequence[str]]], keys: Sequence[Any]
    ) -> list[ViewColumns]:
        for view, _ in requests:
            self.ensure_table(view)
        statement = self._read_statement(requests)
        with self._connection() as conn, conn.cursor(binary=True) as cursor:
            cursor.execute(statement, (list(keys),))
            rows = cursor.fetchall()
        return _split_columns(requests, rows)

    def _read_statement(self, requests: Sequence[tuple[ViewSchema, Sequence[str]]]) -> sql.Composed:
        cache_key = tuple((view, tuple(features)) for view, features in requests)
        statement = self._read_statements.get(cache_key)
        if statement is not None:
            return statement
        key_type = _pg_type(requests[0][0].key_type)
        selected: list[sql.Composable] = []
        joins: list[sql.Composable] = []
        for index, (view, features) in enumerate(requests):
            alias = sql.Identifier(f"v{index}")
            selected += [sql.SQL("{}.{}").format(alias, sql.Identifier(f)) for f in features]
            selected.append(sql.SQL("{}.event_ts").format(alias))
            joins.append(
                sql.SQL("LEFT JOIN {table} {alias} ON {alias}.{key} = k.key").format(
                    table=self._table(view), alias=alias, key=sql.Identifier(view.join_key)
                )
            )
        statement = sql.SQL(
            "SELECT {selected} FROM unnest(%s::{key_type}[]) WITH ORDINALITY AS k(key, ord) "
            "{joins} ORDER BY k.ord"
        ).format(
            selected=sql.SQL(", ").join(selected),
            key_type=sql.SQL(key_type),
            joins=sql.SQL(" ").join(joins),
        )
        self._read_statements[cache_key] = statement
        return statement

    def scan(self, view: ViewSchema, features: Sequence[str]) -> tuple[list[Any], ViewColumns]:
        self.ensure_table(view)
        statement = sql.SQL(
            "SELECT {key}, {features}, event_ts FROM {table} ORDER BY {key}"
        ).format(
            key=sql.Identifier(view.join_key),
            features=sql.SQL(", ").join(map(sql.Identifier, features)),
            table=self._table(view),
        )
        with self._connection() as conn, conn.cursor(binary=True) as cursor:
            rows = cursor.execute(statement).fetchall()
        keys = [row[0] for row in rows]
        return keys, _split_columns([(view, features)], [row[1:] for row in rows])[0]

    # --- helpers -------------------------------------------------------------------------

    def _table(self, view: ViewSchema) -> sql.Identifier:
        return sql.Identifier(SCHEMA, view.table_name)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        # Waiting for a pooled connection longer than the request may still run is wasted.
        remaining = seconds_remaining()
        timeout = POOL_WAIT_SECONDS if remaining is None else min(POOL_WAIT_SECONDS, remaining)
        try:
            with self._pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            raise Unavailable(
                f"no online-store connection within {timeout:.1f}s: the database is down or "
                "every pooled connection is busy (RECSTACK_DB_POOL_SIZE)"
            ) from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(f"online store database connection failed: {exc}") from exc


def _wrap_json(row: Row, json_columns: list[int]) -> Row:
    values = list(row)
    for index in json_columns:
        if values[index] is not None:
            values[index] = Jsonb(values[index])
    return tuple(values)


def _split_columns(
    requests: Sequence[tuple[ViewSchema, Sequence[str]]], rows: list[tuple[Any, ...]]
) -> list[ViewColumns]:
    """Cut each result row into per-view column lists (features…, event_ts per view)."""
    result: list[ViewColumns] = []
    offset = 0
    for _, features in requests:
        width = len(features)
        values = {
            feature: [row[offset + position] for row in rows]
            for position, feature in enumerate(features)
        }
        event_times = [row[offset + width] for row in rows]
        result.append(ViewColumns(values, event_times))
        offset += width + 1
    return result
