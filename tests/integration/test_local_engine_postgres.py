"""The local engine reading POSTGRES sources on a real server, into the real stores."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.adapters.source_databases import SourceDatabases
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


@pytest.fixture(scope="module")
def databases(database_url, source_roles, orders):
    """POSTGRES sources of project `p` read as its own role, granted the orders table only."""
    role = source_roles.grant("p")
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute(f"GRANT SELECT ON {orders} TO {role}")
    return SourceDatabases(database_url, role_template=source_roles.template)


class CollectingOffline:
    def __init__(self):
        self.rows = []

    def write(self, view, table, job_id, chunk):
        self.rows += table.to_pylist()
        return table.num_rows


class NoOnline:
    def bulk_load(self, view, table):
        raise AssertionError("not asked for the online store")


def offline_rows(databases, task, **engine_options):
    offline = CollectingOffline()
    engine_options.setdefault("source_databases", databases)
    progress = LocalEngine(**engine_options).run(
        task, offline_store=offline, online_store=NoOnline(), on_chunk=lambda p: True
    )
    rows = sorted(offline.rows, key=lambda row: (row["event_ts"], row["user_id"]))
    return rows, progress


def task_for(source, view=VIEW, transformation=None, stores=(Store.OFFLINE,)):
    return MaterializationTask(view, source, WINDOW, stores, "job1", None, transformation)


def test_a_table_is_read_in_chunks_filtered_to_the_window(database_url, orders, databases):
    source = PostgresSourceSpec("created_at", table=f"public.{orders}")
    rows, progress = offline_rows(databases, task_for(source), chunk_rows=1)
    assert [
        (row["user_id"], row["amount"], row["tags"], row["note"], row["event_ts"]) for row in rows
    ] == [
        (1, 20.25, ["a", "b"], "x", T0),
        (2, 7.0, [], None, T0 + timedelta(hours=3)),
        (1, 1.0, None, "y", T0 + timedelta(hours=5)),
    ]
    assert progress.chunks_done == 3


def test_a_query_source_with_an_empty_url_reads_the_platform_database_as_the_project(
    databases, orders
):
    # `%` reaches the server as written: the query is not a parameterized statement.
    query = f"SELECT * FROM {orders} WHERE note LIKE '%' OR note IS NULL;"
    source = PostgresSourceSpec("created_at", query=query)
    rows, _ = offline_rows(databases, task_for(source))
    assert [row["user_id"] for row in rows] == [1, 2, 1]
    with pytest.raises(FailedPrecondition, match="no way to reach POSTGRES sources"):
        offline_rows(None, task_for(source))


def test_a_sql_transformation_over_a_postgres_source(database_url, orders, databases):
    sql = SqlTransformation(
        "SELECT a.user_id, a.amount * 2 AS amount, a.tags, upper(a.note) AS note, a.created_at "
        "FROM source AS a JOIN (SELECT DISTINCT user_id FROM source) AS b USING (user_id)"
    )
    source = PostgresSourceSpec("created_at", table=orders)
    rows, _ = offline_rows(databases, task_for(source, transformation=sql), chunk_rows=2)
    assert [(row["user_id"], row["amount"], row["note"]) for row in rows] == [
        (1, 40.5, "X"),
        (2, 14.0, None),
        (1, 2.0, "Y"),
    ]


def test_aggregations_over_a_postgres_source_read_the_lookback(database_url, orders, databases):
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
    source = PostgresSourceSpec("created_at", table=orders)
    rows, _ = offline_rows(databases, task_for(source, view=view, transformation=aggregations))
    assert [(row["user_id"], row["spent_6h"], row["orders_6h"]) for row in rows] == [
        (1, 30.75, 2),
        (2, 7.0, 1),
        (1, 21.25, 2),
    ]


def test_into_the_real_offline_and_online_stores(database_url, orders, tmp_path, databases):
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS online")
    view = dataclasses.replace(VIEW, name=f"orders_{secrets.token_hex(3)}")
    online = PostgresOnlineStore(to_libpq(database_url), min_size=1, max_size=2)
    offline = ParquetOfflineStore(str(tmp_path / "offline"))
    try:
        source = PostgresSourceSpec("created_at", table=orders)
        progress = LocalEngine(chunk_rows=2, source_databases=databases).run(
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


def test_a_bad_query_and_an_unreachable_server_are_reported(database_url, orders, databases):
    bad = PostgresSourceSpec("created_at", query="SELECT nope FROM nowhere")
    with pytest.raises(FailedPrecondition, match="nowhere"):
        offline_rows(databases, task_for(bad))
    down = SourceDatabases("postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1"):
        offline_rows(down, task_for(PostgresSourceSpec("created_at", table=orders)))


def test_a_source_query_cannot_write(database_url, orders, databases):
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {orders}_seq")
        conn.execute(f"GRANT USAGE ON SEQUENCE {orders}_seq TO {databases.role('p')}")
    query = f"SELECT *, nextval('{orders}_seq') AS n FROM {orders}"
    source = PostgresSourceSpec("created_at", query=query)
    with pytest.raises(FailedPrecondition, match="read-only"):
        offline_rows(databases, task_for(source))
    rows, _ = offline_rows(databases, task_for(PostgresSourceSpec("created_at", table=orders)))
    assert len(rows) == 3


def test_stopping_after_a_chunk_closes_the_cursor(database_url, orders, databases):
    source = PostgresSourceSpec("created_at", table=orders)
    offline = CollectingOffline()
    progress = LocalEngine(chunk_rows=1, source_databases=databases).run(
        task_for(source), offline_store=offline, online_store=NoOnline(), on_chunk=lambda p: False
    )
    assert progress.chunks_done == 1 and len(offline.rows) == 1
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        readers = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    assert readers == (0,)


# --- isolation: what a project's source query may not reach ---------------------------------


@pytest.fixture(scope="module")
def elsewhere(database_url):
    """Another project's table, and the platform's own schema, in the same database."""
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS other_project")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS other_project.orders (user_id bigint, ts timestamptz)"
        )
        conn.execute("CREATE SCHEMA IF NOT EXISTS registry")
    return "other_project.orders"


# The columns VIEW reads, around what each query tries to reach.
COLUMNS = "SELECT 1::bigint AS user_id, 1.0::float8 AS amount, NULL::text[] AS tags, {} AS note, "


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        (
            COLUMNS.format("pg_read_file('/etc/passwd')") + "now() AS created_at",
            "permission denied for function pg_read_file",
        ),
        (
            COLUMNS.format("name") + "now() AS created_at FROM registry.resources",
            "permission denied for schema registry",
        ),
        (
            COLUMNS.format("NULL::text") + "ts AS created_at FROM other_project.orders",
            "permission denied for schema other_project",
        ),
    ],
)
def test_a_project_role_reads_neither_server_files_nor_the_registry_nor_other_projects(
    databases, elsewhere, query, refusal
):
    source = PostgresSourceSpec("created_at", query=query)
    with pytest.raises(FailedPrecondition, match=refusal) as caught:
        offline_rows(databases, task_for(source))
    assert caught.value.reason == "SOURCE_QUERY_FAILED"


def test_sources_never_run_as_a_superuser(database_url, orders):
    # The template names the server's superuser: refused before any query runs.
    privileged = SourceDatabases(database_url, role_template="postgres")
    with pytest.raises(FailedPrecondition) as caught:
        offline_rows(privileged, task_for(PostgresSourceSpec("created_at", table=orders)))
    assert caught.value.reason == "SOURCE_ROLE_PRIVILEGED"


def test_a_statement_is_cancelled_even_if_the_query_lifts_its_timeout(databases, orders):
    fast = dataclasses.replace(databases, statement_timeout_s=0.5)
    for query in (
        f"SELECT *, pg_sleep(5) AS s FROM {orders}",
        f"SELECT *, set_config('statement_timeout', '0', false) AS c, pg_sleep(5) AS s "
        f"FROM {orders}",
    ):
        with pytest.raises(FailedPrecondition) as caught:
            offline_rows(fast, task_for(PostgresSourceSpec("created_at", query=query)))
        assert caught.value.reason == "SOURCE_STATEMENT_TIMEOUT", query


def test_a_job_reads_at_most_the_row_limit(databases, orders):
    limited = dataclasses.replace(databases, max_rows=2)
    with pytest.raises(FailedPrecondition) as caught:
        offline_rows(
            limited, task_for(PostgresSourceSpec("created_at", table=orders)), chunk_rows=1
        )
    assert caught.value.reason == "SOURCE_ROW_LIMIT"
