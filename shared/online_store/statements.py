"""SQL of the PostgreSQL online store, built from a view's schema with safe identifiers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from psycopg import sql

from shared.feature_views import ViewSchema
from shared.values import TYPES

SCHEMA = "online"


def pg_type(value_type: int) -> str:
    return TYPES[value_type].postgres


def table(view: ViewSchema) -> sql.Identifier:
    return sql.Identifier(SCHEMA, view.table_name)


def staging_table(view: ViewSchema) -> sql.Identifier:
    """A session's temporary staging table for one view version (short: names max 63 bytes)."""
    digest = hashlib.sha256(view.table_name.encode()).hexdigest()[:24]
    return sql.Identifier(f"stage_{digest}")


def column_names(view: ViewSchema) -> list[str]:
    """Columns a write supplies, in row order: key, features in declared order, event time."""
    return [view.join_key, *(feature.name for feature in view.features), "event_ts"]


def column_types(view: ViewSchema) -> list[str]:
    return [pg_type(view.key_type), *(pg_type(f.value_type) for f in view.features), "timestamptz"]


def create_table(view: ViewSchema) -> sql.Composed:
    columns = [
        sql.SQL("{} {} PRIMARY KEY").format(
            sql.Identifier(view.join_key), sql.SQL(pg_type(view.key_type))
        ),
        *(
            sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.value_type)))
            for f in view.features
        ),
        sql.SQL("event_ts timestamptz NOT NULL"),
        sql.SQL("written_ts timestamptz NOT NULL DEFAULT now()"),
    ]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        table(view), sql.SQL(", ").join(columns)
    )


def create_staging(view: ViewSchema) -> sql.Composed:
    """No index and no WAL: a staging table costs about what the COPY into it costs.

    ON COMMIT DELETE ROWS lets one pooled session reuse it, so writes add no catalog churn.
    """
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_))
        for name, type_ in zip(column_names(view), column_types(view), strict=True)
    )
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        staging_table(view), columns
    )


def copy_into(target: sql.Identifier, names: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, names))
    )


def upsert_from_staging(view: ViewSchema, *, deduplicated: bool) -> sql.Composed:
    """Staged rows into the view's table; the stored row stays when its event is newer.

    Rows go in key order (DISTINCT ON sorts; a deduplicated load was staged sorted), so
    concurrent writers lock shared keys in the same order and do not deadlock. (Text keys are
    sorted by bytes on the client and by collation here; should two orders ever cross,
    PostgreSQL aborts one writer, which the store reports as ABORTED.)
    """
    names = column_names(view)
    key = sql.Identifier(view.join_key)
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
        for name in [*names[1:], "written_ts"]
    )
    source = (
        sql.SQL("SELECT {columns}, now() FROM {staging}")
        if deduplicated
        # DISTINCT ON keeps each key's newest row of the batch.
        else sql.SQL(
            "SELECT DISTINCT ON ({key}) {columns}, clock_timestamp() FROM {staging} "
            "ORDER BY {key}, event_ts DESC"
        )
    ).format(columns=columns, staging=staging_table(view), key=key)
    return sql.SQL(
        "INSERT INTO {table} AS t ({columns}, written_ts) {source} "
        "ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE t.event_ts <= EXCLUDED.event_ts"
    ).format(table=table(view), columns=columns, source=source, key=key, updates=updates)


def is_empty(view: ViewSchema) -> sql.Composed:
    return sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(table(view))


def lock_for_load(view: ViewSchema) -> sql.Composed:
    """Blocks other writers (not readers) while a load fills an empty table directly."""
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table(view))


def read(
    requests: Sequence[tuple[ViewSchema, Sequence[str]]], *, one: bool = False
) -> sql.Composed:
    """One statement for every view: the keys, in request order, left-joined to each table.

    Each view contributes its features and then its event_ts; a missing row reads as NULLs.
    With `one`, the statement takes a single key (not an array): the most common read, which
    PostgreSQL then answers with one index probe per view, without unnesting and sorting
    (about 40 us less per call on these machines).
    """
    key_type = pg_type(requests[0][0].key_type)
    selected: list[sql.Composable] = []
    joins: list[sql.Composable] = []
    for index, (view, features) in enumerate(requests):
        alias = sql.Identifier(f"v{index}")
        selected += [sql.SQL("{}.{}").format(alias, sql.Identifier(f)) for f in features]
        selected.append(sql.SQL("{}.event_ts").format(alias))
        joins.append(
            sql.SQL("LEFT JOIN {table} {alias} ON {alias}.{key} = k.key").format(
                table=table(view), alias=alias, key=sql.Identifier(view.join_key)
            )
        )
    keys = (
        "(SELECT %b::{key_type} AS key) AS k {joins}"
        if one
        else "unnest(%b::{key_type}[]) WITH ORDINALITY AS k(key, ord) {joins} ORDER BY k.ord"
    )
    return sql.SQL("SELECT {selected} FROM " + keys).format(
        selected=sql.SQL(", ").join(selected),
        key_type=sql.SQL(key_type),
        joins=sql.SQL(" ").join(joins),
    )


def scan_since(view: ViewSchema, features: Sequence[str], since: bool) -> sql.Composed:
    """Every row (or, with `since`, those written after the %s parameter), for a cache's
    incremental refresh."""
    where = sql.SQL(" WHERE written_ts > %s") if since else sql.SQL("")
    return sql.SQL("SELECT {key}, {features}, event_ts FROM {table}{where} ORDER BY {key}").format(
        key=sql.Identifier(view.join_key),
        features=sql.SQL(", ").join(map(sql.Identifier, features)),
        table=table(view),
        where=where,
    )


def scan(view: ViewSchema, features: Sequence[str]) -> sql.Composed:
    return sql.SQL("SELECT {key}, {features}, event_ts FROM {table} ORDER BY {key}").format(
        key=sql.Identifier(view.join_key),
        features=sql.SQL(", ").join(map(sql.Identifier, features)),
        table=table(view),
    )
