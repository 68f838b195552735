"""Materialization next to the bare limits it stands on, in one run on this machine.

- `materialize_1m`: 1,000,000 rows x 20 DOUBLE features (100,000 keys, 10 events each) from a
  Parquet FILE source into both stores, end to end through the real registry and
  materialization services: Backfill over gRPC until the job SUCCEEDED (rows/s).
- `read_copy_1m`: the bare limit: a pyarrow read of the same file plus a binary COPY of the
  same rows into an unindexed table (rows/s).
- `export_1m` / `asof_1m`: ExportTrainingSet of 1,000,000 labelled rows against 2 views of
  100,000 keys with history, next to a bare DuckDB ASOF JOIN (bench/materialization_export.py).
Each pair runs interleaved (A, B, A, B …) after a warm-up; the figure is the median.
Prints a table and writes bench/results/materialization.json.

    python -m bench.materialization [--rows 1000000] [--keys 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb

from bench import materialization_export
from bench.harness import (
    RESULTS_DIR,
    file_roots_env,
    print_table,
    scratch_database,
    service_process,
    wait_serving,
    write_result,
)
from infra.local.ports import free_port
from services.materialization.export import ExportOptions
from shared.channels import open_channel
from shared.db import to_libpq
from shared.online_store.binary_copy import BinaryCopyEncoder

NAME = "materialization"
PROJECT = "bench"
FEATURES = [f"f{index:02d}" for index in range(20)]
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
LOG_DIR = RESULTS_DIR / "logs"
TARGETS = {"materialize_1m_vs_read_copy_1m": ">= 0.5", "export_1m_vs_asof_1m": "<= 2.0"}


def write_source(path: Path, rows: int, keys: int) -> None:
    rng = np.random.default_rng(11)
    columns: dict[str, Any] = {
        "user_id": pa.array(rng.integers(1, keys + 1, rows), pa.int64()),
        "ts": pa.array(
            DAY0.timestamp() * 1e6 + rng.integers(0, 86_400_000_000, rows), pa.int64()
        ).cast(pa.timestamp("us", tz="UTC")),
    }
    for name in FEATURES:
        columns[name] = pa.array(rng.random(rows))
    pq.write_table(pa.table(columns), path)


def define_view(
    registry: registry_service_pb2_grpc.RegistryServiceStub, view_id: str, source: Path
) -> None:
    field = feature_view_pb2.FeatureField
    vt = value_pb2.ValueType
    definitions = [
        rpb.Definition(
            id="user", entity=entity_pb2.Entity(join_key="user_id", key_type=vt.VALUE_TYPE_INT64)
        ),
        rpb.Definition(
            id="events",
            data_source=data_source_pb2.DataSource(
                file=data_source_pb2.FileSource(
                    path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                ),
                event_timestamp_column="ts",
            ),
        ),
        rpb.Definition(
            id=view_id,
            feature_view=feature_view_pb2.FeatureView(
                entity="user",
                source="events",
                type=feature_view_pb2.FeatureView.TYPE_BATCH,
                online_enabled=True,
                offline_enabled=True,
                fields=[field(name="user_id", value_type=vt.VALUE_TYPE_INT64)]
                + [field(name=name, value_type=vt.VALUE_TYPE_DOUBLE) for name in FEATURES],
            ),
        ),
    ]
    registry.Apply(rpb.ApplyRequest(parent=f"projects/{PROJECT}", definitions=definitions))


def materialize_once(
    registry: registry_service_pb2_grpc.RegistryServiceStub,
    materialization: materialization_service_pb2_grpc.MaterializationServiceStub,
    source: Path,
    run: int,
) -> float:
    """Seconds from Backfill to SUCCEEDED for a fresh view (fresh tables) over the source."""
    view_id = f"wide_{run}"
    define_view(registry, view_id, source)
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(DAY0)
    window.end_time.FromDatetime(DAY0 + timedelta(days=1))
    started = time.perf_counter()
    [job] = materialization.Backfill(
        mpb.BackfillRequest(
            feature_view=f"projects/{PROJECT}/featureViews/{view_id}", window=window
        )
    ).jobs
    last = job
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=600):
        last = update.job
    elapsed = time.perf_counter() - started
    if last.state != job_pb2.Job.STATE_SUCCEEDED:
        raise RuntimeError(
            f"{job.name} ended {job_pb2.Job.State.Name(last.state)}: {last.error_message}"
        )
    return elapsed


def read_copy_once(source: Path, conninfo: str, run: int) -> float:
    """Seconds for a bare pyarrow read plus a bare binary COPY of the same rows into an
    unindexed table, encoded the fastest way we know (the serving benchmark's `copy`)."""
    table_name = f"bare_copy_{run}"
    columns = ["user_id", *FEATURES, "ts"]
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE TABLE {} (user_id bigint, {}, ts timestamptz)").format(
                sql.Identifier(table_name),
                sql.SQL(", ").join(
                    sql.SQL("{} double precision").format(sql.Identifier(f)) for f in FEATURES
                ),
            )
        )
        started = time.perf_counter()
        table = pq.read_table(source, columns=columns)
        with (
            connection.transaction(),
            connection.cursor().copy(
                sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table_name))
            ) as copy,
        ):
            for chunk in BinaryCopyEncoder(table.columns).chunks():
                copy.write(chunk)
        elapsed = time.perf_counter() - started
        connection.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table_name)))
    return elapsed


def measure_materialization(
    url: str, scratch: Path, rows: int, keys: int, repeats: int
) -> dict[str, list[float]]:
    source = scratch / "events.parquet"
    write_source(source, rows, keys)
    registry_port, materialization_port = free_port(), free_port()
    # Both services: the database, and the scratch directory as every project's file root.
    base = {"RECSTACK_DATABASE_URL": url, **file_roots_env(scratch)}
    registry_address = f"127.0.0.1:{registry_port}"
    materialization_address = f"127.0.0.1:{materialization_port}"
    with (
        service_process(
            "services.registry.server",
            {**base, "RECSTACK_GRPC_PORT": str(registry_port)},
            LOG_DIR / "materialization-registry.log",
        ) as registry_process,
        service_process(
            "services.materialization.server",
            {
                **base,
                "RECSTACK_GRPC_PORT": str(materialization_port),
                "RECSTACK_REGISTRY_ADDR": registry_address,
                "RECSTACK_LOG_LEVEL": "WARNING",
            },
            LOG_DIR / "materialization-materialization.log",
        ) as materialization_process,
        open_channel(registry_address) as registry_channel,
        open_channel(materialization_address) as materialization_channel,
    ):
        wait_serving(registry_address, registry_process)
        wait_serving(materialization_address, materialization_process)
        registry = registry_service_pb2_grpc.RegistryServiceStub(registry_channel)
        materialization = materialization_service_pb2_grpc.MaterializationServiceStub(
            materialization_channel
        )
        conninfo = to_libpq(url)
        read_copy_once(source, conninfo, 0)  # warm-up: page cache, connections
        seconds: dict[str, list[float]] = {"materialize_1m": [], "read_copy_1m": []}
        for run in range(1, repeats + 1):
            seconds["materialize_1m"].append(
                materialize_once(registry, materialization, source, run)
            )
            seconds["read_copy_1m"].append(read_copy_once(source, conninfo, run))
            print(
                f"run {run}: materialize {seconds['materialize_1m'][-1]:.2f}s, "
                f"read+copy {seconds['read_copy_1m'][-1]:.2f}s"
            )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.materialization")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with (
        scratch_database("bench_materialization") as url,
        tempfile.TemporaryDirectory(prefix="recstack-bench-materialization-") as scratch,
    ):
        seconds = measure_materialization(url, Path(scratch), args.rows, args.keys, args.repeats)
        export_seconds = materialization_export.measure(
            Path(scratch) / "export", args.rows, args.keys, args.export_repeats, ExportOptions()
        )
    figures: dict[str, dict[str, Any]] = {
        name: {
            "rows_per_s": round(args.rows / statistics.median(runs)),
            "rows": args.rows,
            "n": len(runs),
        }
        for name, runs in seconds.items()
    }
    export_figures, export_ratios = materialization_export.summarize(export_seconds, args.rows)
    figures.update(export_figures)
    ratios = {
        "materialize_1m_vs_read_copy_1m": figures["materialize_1m"]["rows_per_s"]
        / figures["read_copy_1m"]["rows_per_s"],
        **export_ratios,
    }
    print_table(figures, ratios, TARGETS)
    for name in export_figures:
        print(f"{name:<16}{figures[name]['seconds']:>10.3f} s (median of {figures[name]['n']})")
    print(f"wrote {write_result(NAME, figures, ratios, TARGETS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
