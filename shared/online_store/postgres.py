"""PostgreSQL online store: one table per feature-view version in schema `online`.

Typed columns (arrays as PostgreSQL arrays, maps as jsonb) keep the layout inspectable with
SQL. Writes go through binary COPY into a staging table and one upsert, so a batch is atomic;
bulk loads sort and deduplicate on the client and, into an empty table, COPY straight in.
Reads of several views are one prepared statement with binary results.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from shared.errors import NotFound
from shared.feature_views import ViewSchema
from shared.online_store import statements
from shared.online_store.base import Row, Scan, ViewColumns, WriteResult
from shared.online_store.bulk import LoadData, PreparedLoad, prepare
from shared.online_store.statements import SCHEMA
from shared.pg_pool import ResilientPool

__all__ = ["SCHEMA", "PostgresOnlineStore"]

T = TypeVar("T")
# Distinct read shapes (views x features) kept rendered; past this the cache starts over.
MAX_READ_PLANS = 10_000
ReadRequests = Sequence[tuple[ViewSchema, Sequence[str]]]


@dataclass(frozen=True)
class _ReadPlan:
    """A read statement rendered once, and where each view's columns sit in its rows."""

    query: bytes
    # The same read of exactly one key (a scalar parameter): the common case, made cheaper.
    one_key_query: bytes
    spans: tuple[tuple[tuple[str, ...], int], ...]  # (features, first column) per view


class PostgresOnlineStore:
    def __init__(self, conninfo: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self._pool = ResilientPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            # Every statement is prepared on first use, so the hot read is parsed and planned
            # once per connection.
            kwargs={"autocommit": True, "prepare_threshold": 0},
            configure=_configure,
            name="online-store",
            what="online-store",
        )
        self._ensured: set[str] = set()
        self._lock = threading.Lock()
        self._read_plans: dict[tuple[tuple[str, tuple[str, ...]], ...], _ReadPlan] = {}
        # Per pooled session: its staging tables (they outlive any one write), and one
        # binary cursor for reads (a new cursor per read costs ~20 us).
        self._staged: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._cursors: weakref.WeakKeyDictionary[psycopg.Connection[Any], psycopg.Cursor[Any]] = (
            weakref.WeakKeyDictionary()
        )
        with self._connection() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))

    def close(self) -> None:
        self._pool.close()

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    def _retrying(self, operation: Callable[[], T]) -> T:
        return self._pool.retrying(operation)

    # --- DDL -----------------------------------------------------------------------------

    def ensure_table(self, view: ViewSchema, within: Any = None) -> None:
        if within is not None:
            # Part of the caller's transaction (a registry write): it commits or rolls back
            # with it, so nothing is cached until then.
            within.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (view.table_name,))
            within.execute(statements.create_table(view))
            return None
        return self._retrying(lambda: self._ensure_table(view))

    def _ensure_table(self, view: ViewSchema) -> None:
        """Create the view version's table if missing (idempotent, safe to race)."""
        if view.table_name in self._ensured:
            return
        # Concurrent first writers race on the catalog; the advisory lock serialises them.
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (view.table_name,))
            conn.execute(statements.create_table(view))
        with self._lock:
            self._ensured.add(view.table_name)

    def drop_table(self, view: ViewSchema, within: Any = None) -> None:
        if within is not None:
            within.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(statements.table(view)))
            with self._lock:
                self._ensured.discard(view.table_name)
            return None
        return self._retrying(lambda: self._drop_table(view))

    def _drop_table(self, view: ViewSchema) -> None:
        """Drop the version's table; only `project`, `name` and `version` of `view` matter."""
        with self._connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(statements.table(view)))
        with self._lock:
            self._ensured.discard(view.table_name)

    def retain_keys(self, view: ViewSchema, keys: Sequence[Any]) -> int:
        return self._retrying(lambda: self._retain_keys(view, keys))

    def _retain_keys(self, view: ViewSchema, keys: Sequence[Any]) -> int:
        """Delete every row whose key is not in `keys`, in one statement; returns rows deleted."""
        self.ensure_table(view)
        statement = sql.SQL("DELETE FROM {} WHERE NOT ({} = ANY(%s))").format(
            statements.table(view), sql.Identifier(view.join_key)
        )
        with self._connection() as conn:
            return conn.execute(statement, (list(keys),)).rowcount

    # --- writes --------------------------------------------------------------------------

    def write(self, view: ViewSchema, rows: Sequence[Row]) -> WriteResult:
        return self._retrying(lambda: self._write(view, rows))

    def _write(self, view: ViewSchema, rows: Sequence[Row]) -> WriteResult:
        """A real-time batch: rows → session staging table → one upsert, one transaction."""
        if not rows:
            return WriteResult(0, 0)
        self.ensure_table(view)
        types = statements.column_types(view)
        json_columns = [i for i, pg_type in enumerate(types) if pg_type == "jsonb"]
        copy_rows = statements.copy_into(
            statements.staging_table(view), statements.column_names(view)
        )
        with self._connection() as conn:
            self._ensure_staging(conn, view)
            with conn.transaction():
                with conn.cursor().copy(copy_rows) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(_wrap_json(row, json_columns) if json_columns else row)
                upsert = statements.upsert_from_staging(view, deduplicated=False)
                written = conn.execute(upsert).rowcount
        return WriteResult(written=written, stale=len(rows) - written)

    def bulk_load(self, view: ViewSchema, data: LoadData) -> WriteResult:
        return self._retrying(lambda: self._bulk_load(view, data))

    def _bulk_load(self, view: ViewSchema, data: LoadData) -> WriteResult:
        """A large load (an Arrow table, or rows) in one transaction, near COPY speed.

        Columns are the view's join key, its features and `event_ts`, matched by name for
        Arrow input. An empty table (a new version's first load) is filled by COPY directly,
        holding off other writers meanwhile; otherwise rows are staged and upserted, where an
        older event never replaces a newer one. Pass a whole load per call: each call sorts
        its rows and commits once.
        """
        self.ensure_table(view)
        load = prepare(view, data)
        if not load.rows:
            return WriteResult(0, 0)
        with self._connection() as conn:
            self._ensure_staging(conn, view)
            with conn.transaction():
                if self._claim_if_empty(conn, view):
                    self._copy(conn, statements.table(view), view, load)
                    written = load.rows
                else:
                    self._copy(conn, statements.staging_table(view), view, load)
                    upsert = statements.upsert_from_staging(view, deduplicated=True)
                    written = conn.execute(upsert).rowcount
        return WriteResult(written=written, stale=load.input_rows - written)

    def _claim_if_empty(self, conn: psycopg.Connection[Any], view: ViewSchema) -> bool:
        """True when the table is empty and locked against other writers until commit."""
        if not conn.execute(statements.is_empty(view)).fetchone()[0]:  # type: ignore[index]
            return False
        conn.execute(statements.lock_for_load(view))
        # A writer may have committed between the check and the lock.
        return bool(conn.execute(statements.is_empty(view)).fetchone()[0])  # type: ignore[index]

    def _copy(
        self,
        conn: psycopg.Connection[Any],
        target: sql.Identifier,
        view: ViewSchema,
        load: PreparedLoad,
    ) -> None:
        statement = statements.copy_into(target, statements.column_names(view))
        with conn.cursor().copy(statement) as copy:
            if load.fixed_width:
                for chunk in load.copy_chunks():
                    copy.write(chunk)
                return
            copy.set_types(statements.column_types(view))
            for row in load.python_rows():
                copy.write_row(row)

    def _ensure_staging(self, conn: psycopg.Connection[Any], view: ViewSchema) -> None:
        """The session's staging table, created outside any transaction: created inside one
        that rolls back, it would vanish while this cache still names it."""
        staged = self._staged.setdefault(conn, set())
        if view.table_name not in staged:
            conn.execute(statements.create_staging(view))
            staged.add(view.table_name)

    # --- reads ---------------------------------------------------------------------------

    def read(self, requests: ReadRequests, keys: Sequence[Any]) -> list[ViewColumns]:
        return self._retrying(lambda: self._read(requests, keys))

    def _read(self, requests: ReadRequests, keys: Sequence[Any]) -> list[ViewColumns]:
        """Each view's features for `keys` (in key order, NULL where absent), one round trip."""
        plan = self._read_plans.get(_plan_key(requests))
        if plan is None:
            plan = self._plan_read(requests)
        with self._connection() as conn:
            cursor = self._cursors.get(conn)
            if cursor is None:
                cursor = self._cursors.setdefault(conn, conn.cursor(binary=True))
            try:
                if len(keys) == 1:
                    rows = cursor.execute(plan.one_key_query, (keys[0],), prepare=True).fetchall()
                else:
                    rows = cursor.execute(plan.query, (keys,), prepare=True).fetchall()
            except errors.UndefinedTable as exc:
                self._forget(requests)
                raise NotFound(
                    "the online table of a requested feature view version is gone (version "
                    "deleted?); retry with a current version"
                ) from exc
        columns = list(zip(*rows, strict=True)) if rows else [()] * _width(plan)
        return [
            ViewColumns(
                dict(zip(features, columns[start : start + len(features)], strict=True)),
                columns[start + len(features)],
            )
            for features, start in plan.spans
        ]

    def _plan_read(self, requests: ReadRequests) -> _ReadPlan:
        # No ensure_table here: tables come with their view version (the registry creates
        # them), and a read must never resurrect the table of a deleted version.
        spans = []
        start = 0
        for _, features in requests:
            spans.append((tuple(features), start))
            start += len(features) + 1
        with self._connection() as conn:
            query = statements.read(requests).as_bytes(conn)
            one_key_query = statements.read(requests, one=True).as_bytes(conn)
        plan = _ReadPlan(query, one_key_query, tuple(spans))
        with self._lock:
            if len(self._read_plans) >= MAX_READ_PLANS:
                self._read_plans.clear()
            self._read_plans[_plan_key(requests)] = plan
        return plan

    def _forget(self, requests: ReadRequests) -> None:
        with self._lock:
            self._read_plans.pop(_plan_key(requests), None)
            for view, _ in requests:
                self._ensured.discard(view.table_name)

    def scan(self, view: ViewSchema, features: Sequence[str]) -> tuple[list[Any], ViewColumns]:
        return self._retrying(lambda: self._scan(view, features))

    def _scan(self, view: ViewSchema, features: Sequence[str]) -> tuple[list[Any], ViewColumns]:
        self.ensure_table(view)
        with self._connection() as conn:
            rows = conn.execute(statements.scan(view, features), binary=True).fetchall()
        keys = [row[0] for row in rows]
        values = {
            feature: [row[position] for row in rows]
            for position, feature in enumerate(features, start=1)
        }
        return keys, ViewColumns(values, [row[-1] for row in rows])

    def scan_since(self, view: ViewSchema, features: Sequence[str], since: datetime | None) -> Scan:
        return self._retrying(lambda: self._scan_since(view, features, since))

    def _scan_since(
        self, view: ViewSchema, features: Sequence[str], since: datetime | None
    ) -> Scan:
        self.ensure_table(view)
        query = statements.scan_since(view, features, since is not None)
        with self._connection() as conn, conn.transaction():
            # now() is the transaction's start, before the scan's snapshot is taken.
            as_of = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            rows = conn.execute(query, (since,) if since else (), binary=True).fetchall()
        values = {
            feature: [row[position] for row in rows]
            for position, feature in enumerate(features, start=1)
        }
        return Scan([row[0] for row in rows], ViewColumns(values, [row[-1] for row in rows]), as_of)

    # --- helpers -------------------------------------------------------------------------

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._pool.connection()


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Session settings of every pooled connection.

    A generic plan for prepared statements: PostgreSQL otherwise re-plans the read for each
    new key array (custom plans win its cost comparison), which doubles a 1-key read. The
    generic plan (nested loop over the primary-key index) is the right one for 1 to 1,000
    keys anyway.
    """
    conn.execute("SET plan_cache_mode = force_generic_plan")


def _plan_key(requests: ReadRequests) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((view.table_name, tuple(features)) for view, features in requests)


def _width(plan: _ReadPlan) -> int:
    features, start = plan.spans[-1]
    return start + len(features) + 1


def _wrap_json(row: Row, json_columns: list[int]) -> Row:
    values = list(row)
    for index in json_columns:
        if values[index] is not None:
            values[index] = Jsonb(values[index])
    return tuple(values)
