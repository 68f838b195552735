"""The local engine reading POSTGRES sources on a real server, into the real stores."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.adapters.sources import APPLICATION_NAME
from services.materialization.jobs import (
    Aggregation,
    AggregationFunction,
    MaterializationTask,
    PostgresSourceSpec,
    SqlTransformation,
    Store,
    Window,
    WindowedAggregations,
)
from shared.db import to_libpq
from shared.errors import FailedPrecondition, Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import VT

T0 = datetime(2026, 4, 1, 4, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(days=1))
VIEW = ViewSchema(
    "p",
    "orders",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("amount", VT.VALUE_TYPE_DOUBLE),
        Feature("tags", VT.VALUE_TYPE_STRING_LIST),
        Feature("note", VT.VALUE_TYPE_STRING),
    ),
)
# (user_id, amount, tags, note, event time): two before the window, one at its end.
ROWS = [
    (1, 10.5, ["a"], "50%", T0 - timedelta(hours=2)),
    (1, 20.25, ["a", "b"], "x", T0),
    (2, 7.0, [], None, T0 + timedelta(hours=3)),
    (1, 1.0, None, "y", T0 + timedelta(hours=5)),
    (3, 99.0, ["z"], "z", WINDOW.end),
    (None, 5.0, ["n"], "no key", T0 + timedelta(hours=1)),
]


@pytest.fixture(scope="module")
def orders(database_url):
    """A table `orders_<hex>` (amount numeric, event time naive) and its libpq url."""
    name = f"orders_{secrets.token_hex(4)}"
    conninfo = to_libpq(database_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name} (user_id bigint, amount numeric(12, 2), tags text[], "
            "note text, created_at timestamp without time zone, extra jsonb)"
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s, '{{\"k\": 1}}')",
                [(*row[:4], row[4].replace(tzinfo=None)) for row in ROWS],
            )
    yield name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


class CollectingOffline:
    def __init__(self):
        self.rows = []

    def write(self, view, table, job_id, chunk):
        self.rows += table.to_pylist()
        return table.num_rows


class NoOnline:
    def bulk_load(self, view, table):
        raise AssertionError("not asked for the online store")


def offline_rows(task, **engine_options):
    offline = CollectingOffline()
    progress = LocalEngine(**engine_options).run(
        task, offline_store=offline, online_store=NoOnline(), on_chunk=lambda p: True
    )
    rows = sorted(offline.rows, key=lambda row: (row["event_ts"], row["user_id"]))
    return rows, progress


def task_for(source, view=VIEW, transformation=None, stores=(Store.OFFLINE,)):
    return MaterializationTask(view, source, WINDOW, stores, "job1", None, transformation)


def test_a_table_is_read_in_chunks_filtered_to_the_window(database_url, orders):
    source = PostgresSourceSpec("created_at", table=f"public.{orders}", url=database_url)
    rows, progress = offline_rows(task_for(source), chunk_rows=1)
    assert [
        (row["user_id"], row["amount"], row["tags"], row["note"], row["event_ts"]) for row in rows
    ] == [
        (1, 20.25, ["a", "b"], "x", T0),
        (2, 7.0, [], None, T0 + timedelta(hours=3)),
        (1, 1.0, None, "y", T0 + timedelta(hours=5)),
    ]
    assert progress.chunks_done == 3


def test_a_query_source_with_an_empty_url_reads_the_platform_database(database_url, orders):
    # `%` reaches the server as written: the query is not a parameterized statement.
    query = f"SELECT * FROM {orders} WHERE note LIKE '%' OR note IS NULL;"
    source = PostgresSourceSpec("created_at", query=query)
    rows, _ = offline_rows(task_for(source), database_url=database_url)
    assert [row["user_id"] for row in rows] == [1, 2, 1]
    with pytest.raises(FailedPrecondition, match="no platform database url"):
        offline_rows(task_for(source))


def test_a_sql_transformation_over_a_postgres_source(database_url, orders):
    sql = SqlTransformation(
        "SELECT a.user_id, a.amount * 2 AS amount, a.tags, upper(a.note) AS note, a.created_at "
        "FROM source AS a JOIN (SELECT DISTINCT user_id FROM source) AS b USING (user_id)"
    )
    source = PostgresSourceSpec("created_at", table=orders, url=database_url)
    rows, _ = offline_rows(task_for(source, transformation=sql), chunk_rows=2)
    assert [(row["user_id"], row["amount"], row["note"]) for row in rows] == [
        (1, 40.5, "X"),
        (2, 14.0, None),
        (1, 2.0, "Y"),
    ]


def test_aggregations_over_a_postgres_source_read_the_lookback(database_url, orders):
    view = ViewSchema(
        "p",
        "orders",
        1,
        "user_id",
        VT.VALUE_TYPE_INT64,
        (Feature("spent_6h", VT.VALUE_TYPE_DOUBLE), Feature("orders_6h", VT.VALUE_TYPE_INT64)),
    )
    six_hours = timedelta(hours=6)
    aggregations = WindowedAggregations(
        (
            Aggregation(AggregationFunction.SUM, "amount", six_hours, "spent_6h"),
            Aggregation(AggregationFunction.COUNT, "*", six_hours, "orders_6h"),
        )
    )
    source = PostgresSourceSpec("created_at", table=orders, url=database_url)
    rows, _ = offline_rows(task_for(source, view=view, transformation=aggregations))
    assert [(row["user_id"], row["spent_6h"], row["orders_6h"]) for row in rows] == [
        (1, 30.75, 2),
        (2, 7.0, 1),
        (1, 21.25, 2),
    ]


def test_into_the_real_offline_and_online_stores(database_url, orders, tmp_path):
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS online")
    view = dataclasses.replace(VIEW, name=f"orders_{secrets.token_hex(3)}")
    online = PostgresOnlineStore(to_libpq(database_url), min_size=1, max_size=2)
    offline = ParquetOfflineStore(str(tmp_path / "offline"))
    try:
        source = PostgresSourceSpec("created_at", table=orders, url=database_url)
        progress = LocalEngine(chunk_rows=2).run(
            task_for(source, view=view, stores=(Store.OFFLINE, Store.ONLINE)),
            offline_store=offline,
            online_store=online,
            on_chunk=lambda p: True,
        )
        (columns,) = online.read([(view, ["amount", "note"])], [1, 2, 3])
    finally:
        online.drop_table(view)
        online.close()
    assert progress.rows_written_offline == 3
    assert list(columns.values["amount"]) == [1.0, 7.0, None]
    assert list(columns.values["note"]) == ["y", None, None]
    assert progress.rows_written_online >= 2


def test_a_bad_query_and_an_unreachable_server_are_reported(database_url, orders):
    bad = PostgresSourceSpec("created_at", query="SELECT nope FROM nowhere", url=database_url)
    with pytest.raises(FailedPrecondition, match="nowhere"):
        offline_rows(task_for(bad))
    down = PostgresSourceSpec(
        "created_at", table=orders, url="postgresql://postgres@127.0.0.1:1/postgres"
    )
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1"):
        offline_rows(task_for(down))


def test_a_source_query_cannot_write(database_url, orders):
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {orders}_seq")
    query = f"SELECT *, nextval('{orders}_seq') AS n FROM {orders}"
    source = PostgresSourceSpec("created_at", query=query, url=database_url)
    with pytest.raises(FailedPrecondition, match="read-only"):
        offline_rows(task_for(source))
    rows, _ = offline_rows(
        task_for(PostgresSourceSpec("created_at", table=orders, url=database_url))
    )
    assert len(rows) == 3


def test_stopping_after_a_chunk_closes_the_cursor(database_url, orders):
    source = PostgresSourceSpec("created_at", table=orders, url=database_url)
    offline = CollectingOffline()
    progress = LocalEngine(chunk_rows=1).run(
        task_for(source), offline_store=offline, online_store=NoOnline(), on_chunk=lambda p: False
    )
    assert progress.chunks_done == 1 and len(offline.rows) == 1
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        readers = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    assert readers == (0,)
