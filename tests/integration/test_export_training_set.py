"""Training-set export over data that really went through materialization.

The registry and a materialization service (over real PostgreSQL, with an offline store in a
directory this module knows) run in-process; the demo's FILE sources are backfilled, and the
exporter reads that offline store through the real registry client. Every exported value is
checked against a brute-force point-in-time lookup in the source files.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import duration_pb2
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import job_pb2
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import feature_view_pb2, model_feature_set_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb

from infra.local import demo
from services.materialization.adapters.entity_rows import PostgresEntityTables
from services.materialization.adapters.source_databases import SourceDatabases
from services.materialization.export import ExportRequest, TrainingSetExporter
from services.materialization.jobs import Window
from shared.db import to_libpq
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.registry_client import RegistryClient

PROJECT = "export_it"
SET = f"projects/{PROJECT}/modelFeatureSets/ctr"
VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
RECENT_TTL = timedelta(days=1)


@pytest.fixture(scope="module")
def offline_dir(offline_store_dir: Path) -> Path:
    return offline_store_dir


@pytest.fixture(scope="module")
def stubs(registry_address: str, materialization_address: str) -> demo.Stubs:
    # Serving and recommend are not used here; their channels are never opened.
    return demo.Stubs.connect(
        registry_address, materialization_address, "127.0.0.1:1", "127.0.0.1:1"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo.write_sample_data(tmp_path_factory.mktemp("export_data"))


@pytest.fixture(scope="module")
def materialized(stubs: demo.Stubs, data: dict[str, Path]) -> None:
    demo.register(stubs, PROJECT, data)
    _register_recent_view(stubs)
    jobs = [*demo.materialize(stubs, PROJECT), _backfill(stubs, "user_recent")]
    assert [job.state for job in jobs] == [job_pb2.Job.STATE_SUCCEEDED] * 3
    stubs.registry.CreateModelFeatureSet(
        rpb.CreateModelFeatureSetRequest(
            parent=f"projects/{PROJECT}",
            model_feature_set_id="ctr",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(
                features=["user_profile:*", "item_stats:popularity", "user_recent:activity"],
                label="clicked",
            ),
        )
    )


@pytest.fixture(scope="module")
def exporter(
    registry_address: str,
    offline_dir: Path,
    database_url: str,
    materialized: None,
    source_roles,
    client_settings,
) -> Iterator[TrainingSetExporter]:
    client = RegistryClient(registry_address, client=client_settings, refresh_seconds=0)
    # Entity tables are read as POSTGRES sources are: as the project's role, granted `labels`.
    source_roles.grant(PROJECT, schema="labels")
    databases = SourceDatabases(database_url, role_template=source_roles.template)
    yield TrainingSetExporter(
        client, str(offline_dir), entity_tables=PostgresEntityTables(databases)
    )
    client.close()


def _register_recent_view(stubs: demo.Stubs) -> None:
    """A view over the same users source with a one-day TTL, offline only."""
    fields = [
        feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        feature_view_pb2.FeatureField(name="activity", value_type=VT.VALUE_TYPE_DOUBLE),
    ]
    stubs.registry.CreateFeatureView(
        rpb.CreateFeatureViewRequest(
            parent=f"projects/{PROJECT}",
            feature_view_id="user_recent",
            feature_view=FV(
                entity="user",
                source="users",
                type=FV.TYPE_BATCH,
                fields=fields,
                ttl=duration_pb2.Duration(seconds=int(RECENT_TTL.total_seconds())),
                offline_enabled=True,
            ),
        )
    )


def _backfill(stubs: demo.Stubs, view: str) -> job_pb2.Job:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(demo.WINDOW[0])
    window.end_time.FromDatetime(demo.WINDOW[1])
    (job,) = stubs.materialization.Backfill(
        mpb.BackfillRequest(feature_view=f"projects/{PROJECT}/featureViews/{view}", window=window)
    ).jobs
    last = job
    for update in stubs.materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=120):
        last = update.job
    return last


# --- reference ------------------------------------------------------------------------------


def _events(path: Path, key: str) -> dict[int, list[dict[str, Any]]]:
    by_key: dict[int, list[dict[str, Any]]] = {}
    for row in pq.read_table(path).to_pylist():
        by_key.setdefault(row[key], []).append(row)
    return by_key


def _as_of(events: list[dict[str, Any]], at: datetime, ttl: timedelta | None = None) -> Any:
    past = [event for event in events if event["event_ts"] <= at]
    if not past:
        return None
    latest = max(past, key=lambda event: event["event_ts"])
    return None if ttl and at - latest["event_ts"] > ttl else latest


def _expected(data: dict[str, Path], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    users, items = _events(data["users"], "user_id"), _events(data["items"], "item_id")
    expected = []
    for row in rows:
        user = _as_of(users.get(row["user_id"], []), row["event_ts"])
        recent = _as_of(users.get(row["user_id"], []), row["event_ts"], RECENT_TTL)
        item = _as_of(items.get(row["item_id"], []), row["event_ts"])
        out = dict(row)
        for name in demo.USER_FEATURES:
            out[f"user_profile__{name}"] = user and user[name]
        out["item_stats__popularity"] = item and item["popularity"]
        out["user_recent__activity"] = recent and recent["activity"]
        expected.append(out)
    return expected


def _entity_rows(count: int = 400) -> list[dict[str, Any]]:
    """Users and items known and unknown, at times before, inside and after the data."""
    rng = random.Random(7)
    span = int((demo.WINDOW[1] - demo.WINDOW[0]).total_seconds())
    return [
        {
            "user_id": rng.randint(1, 55),
            "item_id": rng.randint(1, 205),
            "event_ts": demo.DAY0 + timedelta(seconds=rng.randint(-86_400, span + 86_400)),
            "clicked": rng.randint(0, 1),
        }
        for _ in range(count)
    ]


ENTITY_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("clicked", pa.int64()),
    ]
)


# --- tests ----------------------------------------------------------------------------------


def test_labelled_rows_get_point_in_time_values_from_the_materialized_store(
    exporter, data, tmp_path
):
    rows = _entity_rows()
    entities = tmp_path / "entities.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ENTITY_SCHEMA), entities)
    output = tmp_path / "training.parquet"
    result = exporter.export(ExportRequest(SET, str(output), entity_parquet_path=str(entities)))
    assert result.row_count == len(rows)
    got = pq.read_table(output).to_pylist()
    assert got == _expected(data, rows)
    assert any(
        row["user_recent__activity"] is None and row["user_profile__activity"] for row in got
    )


def test_a_postgres_table_exports_like_the_same_rows_in_parquet(
    exporter, data, database_url, tmp_path
):
    rows = _entity_rows(150)
    with psycopg.connect(to_libpq(database_url), autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS labels.export_rows")
        connection.execute(
            "CREATE TABLE labels.export_rows (user_id bigint, item_id bigint, "
            "event_ts timestamptz, clicked integer)"
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO labels.export_rows VALUES (%s, %s, %s, %s)",
                [(r["user_id"], r["item_id"], r["event_ts"], r["clicked"]) for r in rows],
            )
    output = tmp_path / "from_table.parquet"
    result = exporter.export(ExportRequest(SET, str(output), entity_table="labels.export_rows"))
    assert result.row_count == len(rows)
    table = pq.read_table(output)
    assert table.schema.field("clicked").type == pa.int32()
    assert table.to_pylist() == _expected(data, rows)


def test_snapshot_at_the_end_holds_each_keys_latest_values(exporter, data, tmp_path):
    at = demo.WINDOW[1]
    output = tmp_path / "snapshot.parquet"
    result = exporter.export(ExportRequest(SET, str(output), snapshot_time=at))
    rows = pq.read_table(output).to_pylist()
    users, items = _events(data["users"], "user_id"), _events(data["items"], "item_id")
    assert result.row_count == len(users) + len(items)
    by_user = {row["user_id"]: row for row in rows if row["user_id"] is not None}
    for user_id, events in users.items():
        latest = _as_of(events, at)
        assert by_user[user_id]["user_profile__age_norm"] == latest["age_norm"]
        recent = _as_of(events, at, RECENT_TTL)
        assert by_user[user_id]["user_recent__activity"] == (recent and recent["activity"])
    by_item = {row["item_id"]: row for row in rows if row["item_id"] is not None}
    assert by_item.keys() == items.keys()


def test_changes_list_every_event_of_the_window(exporter, data, tmp_path):
    window = Window(demo.DAY0 + timedelta(days=2), demo.DAY0 + timedelta(days=3))
    output = tmp_path / "changes.parquet"
    exporter.export(ExportRequest(SET, str(output), changes_window=window))
    rows = pq.read_table(output).to_pylist()
    expected = set()
    for name, key in (("users", "user_id"), ("items", "item_id")):
        for event in pq.read_table(data[name]).to_pylist():
            if window.start <= event["event_ts"] < window.end:
                expected.add((key, event[key], event["event_ts"]))
    got = {
        ("user_id", r["user_id"], r["event_ts"])
        if r["user_id"] is not None
        else ("item_id", r["item_id"], r["event_ts"])
        for r in rows
    }
    assert got == expected
    assert len(rows) == len(expected)


def test_an_unknown_feature_set_is_not_found(exporter, tmp_path):
    request = ExportRequest(
        f"projects/{PROJECT}/modelFeatureSets/nope", str(tmp_path / "o"), snapshot_time=demo.DAY0
    )
    with pytest.raises(NotFound):
        exporter.export(request)


def test_a_view_never_materialized_offline_is_a_failed_precondition(stubs, exporter, tmp_path):
    stubs.registry.CreateFeatureView(
        rpb.CreateFeatureViewRequest(
            parent=f"projects/{PROJECT}",
            feature_view_id="user_never",
            feature_view=FV(
                entity="user",
                source="users",
                type=FV.TYPE_BATCH,
                fields=[
                    feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                    feature_view_pb2.FeatureField(name="tenure", value_type=VT.VALUE_TYPE_DOUBLE),
                ],
                offline_enabled=True,
            ),
        )
    )
    stubs.registry.CreateModelFeatureSet(
        rpb.CreateModelFeatureSetRequest(
            parent=f"projects/{PROJECT}",
            model_feature_set_id="never",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(
                features=["user_profile:age_norm", "user_never:tenure"]
            ),
        )
    )
    request = ExportRequest(
        f"projects/{PROJECT}/modelFeatureSets/never", str(tmp_path / "o"), snapshot_time=demo.DAY0
    )
    with pytest.raises(FailedPrecondition) as caught:
        exporter.export(request)
    assert "user_never" in caught.value.message


@pytest.mark.parametrize("table", ["no_such_table", "a.b.c", "public."])
def test_a_missing_or_malformed_entity_table_is_invalid(exporter, tmp_path, table):
    with pytest.raises(InvalidArgument) as caught:
        exporter.export(ExportRequest(SET, str(tmp_path / "o"), entity_table=table))
    assert caught.value.field == "entity_table"


def test_an_entity_table_outside_the_projects_grants_is_refused(exporter, database_url, tmp_path):
    with psycopg.connect(to_libpq(database_url), autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS public.not_granted (user_id bigint)")
    with pytest.raises(InvalidArgument) as caught:
        exporter.export(
            ExportRequest(SET, str(tmp_path / "x.parquet"), entity_table="public.not_granted")
        )
    assert caught.value.reason == "ENTITY_TABLE_NOT_GRANTED"
    assert "permission denied" in caught.value.message
