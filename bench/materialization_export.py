"""Training-set export next to the bare DuckDB ASOF join it stands on.

One run, on this machine, in a scratch directory:
- two feature views (`users` keyed by user_id with a 7-day TTL, `items` keyed by item_id
  without one), 100,000 keys each with 5 events over 30 days and 10 DOUBLE features, written
  by the real offline store writer in 100,000-row chunks (one file per day per chunk);
- 1,000,000 labelled entity rows (user_id, item_id, event_ts, label) in one Parquet file,
  about 10% of them with keys the views never saw;
- `export_1m`: `TrainingSetExporter.export_entity_rows` (point in time, TTL, ties by write
  order, input order kept, Parquet written and renamed into place);
- `asof_1m`: the bare limit, the same two `ASOF LEFT JOIN`s of the same files written to
  Parquet by DuckDB with the same thread and memory settings, without TTL, tie-breaking or
  ordering.
Both run after a warm-up, interleaved (export, asof, export, …); the figure is the median.
Prints a table and writes bench/results/materialization_export.json.

    python -m bench.materialization_export [--repeats 7] [--rows 1000000] [--keys 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from recstack.common.v1 import feature_ref_pb2
from recstack.registry.v1 import model_feature_set_pb2

from bench.harness import write_result
from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.export import ExportOptions, TrainingSetExporter
from shared.feature_views import Feature, ViewSchema
from shared.values import VT

NAME = "materialization_export"
PROJECT = "bench"
FEATURES = 10
EVENTS_PER_KEY = 5
DAYS = 30
CHUNK_ROWS = 100_000
DAY0_US = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1_000_000
DAY_US = 86_400 * 1_000_000
TARGET = 2.0
RATIO = "export_1m_vs_asof_1m"


class Definitions:
    """The registry's answers for the two views and the feature set, without a registry."""

    def __init__(self, views: list[ViewSchema]) -> None:
        self._views = {view.name: view for view in views}
        refs = [
            feature_ref_pb2.FeatureRef(feature_view=view.name, version=view.version, feature="*")
            for view in views
        ]
        self._set = model_feature_set_pb2.ModelFeatureSet(resolved_features=refs, label="label")

    def model_feature_set(self, project: str, set_id: str) -> Any:
        return self._set

    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema:
        return self._views[view_id]


def _view(name: str, key: str, ttl_seconds: float) -> ViewSchema:
    features = tuple(Feature(f"f{index}", VT.VALUE_TYPE_DOUBLE) for index in range(FEATURES))
    return ViewSchema(PROJECT, name, 1, key, VT.VALUE_TYPE_INT64, features, ttl_seconds)


def write_offline(store: ParquetOfflineStore, view: ViewSchema, keys: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    count = keys * EVENTS_PER_KEY
    columns: dict[str, Any] = {view.join_key: np.tile(np.arange(keys, dtype=np.int64), 5)}
    for feature in view.features:
        columns[feature.name] = rng.random(count)
    times = DAY0_US + rng.integers(0, DAYS * DAY_US, count)
    columns["event_ts"] = pa.array(times, pa.timestamp("us", tz="UTC"))
    table = pa.table(columns)
    for chunk, start in enumerate(range(0, count, CHUNK_ROWS)):
        store.write(view, table.slice(start, CHUNK_ROWS), f"bench{seed}", chunk)
    return count


def write_entities(path: Path, rows: int, keys: int) -> None:
    rng = np.random.default_rng(99)
    unknown = int(keys * 1.1)  # about 10% of the rows name keys no view has
    table = pa.table(
        {
            "user_id": rng.integers(0, unknown, rows),
            "item_id": rng.integers(0, unknown, rows),
            "event_ts": pa.array(
                DAY0_US + rng.integers(-DAY_US, (DAYS + 2) * DAY_US, rows),
                pa.timestamp("us", tz="UTC"),
            ),
            "label": rng.integers(0, 2, rows),
        }
    )
    pq.write_table(table, path)


def bare_asof(
    root: Path, views: list[ViewSchema], entities: Path, output: Path, options: ExportOptions
) -> int:
    """The same joins as plain DuckDB SQL: no TTL, no tie-break, no ordering."""
    selected, joins = [], []
    for alias, view in zip(("u", "i"), views, strict=True):
        files = root / PROJECT / view.name / f"v{view.version}" / "*" / "*.parquet"
        selected += [f"{alias}.{f.name} AS {view.name}__{f.name}" for f in view.features]
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{files}') {alias} ON e.{view.join_key} = "
            f"{alias}.{view.join_key} AND e.event_ts >= {alias}.event_ts"
        )
    sql = (
        f"COPY (SELECT e.*, {', '.join(selected)} FROM read_parquet('{entities}') e "
        f"{' '.join(joins)}) TO '{output}' (FORMAT parquet)"
    )
    config = {"threads": options.threads, "memory_limit": options.memory_limit}
    with duckdb.connect(":memory:", config=config) as connection:
        return int(connection.execute(sql).fetchall()[0][0])


def timed(run: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = run()
    return time.perf_counter() - started, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.materialization_export")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    options = ExportOptions()
    with tempfile.TemporaryDirectory(prefix="recstack-bench-export-") as scratch:
        seconds = measure(Path(scratch), args.rows, args.keys, args.repeats, options)
    figures, ratios = summarize(seconds, args.rows)
    targets = {RATIO: f"<= {TARGET}"}
    print_table(figures, ratios)
    setup = {
        "entity_rows": args.rows,
        "keys_per_view": args.keys,
        "events_per_key": EVENTS_PER_KEY,
        "features_per_view": FEATURES,
        "duckdb_threads": options.threads,
        "duckdb_memory_limit": options.memory_limit,
    }
    print(f"wrote {write_result(NAME, figures, ratios, targets, {'setup': setup})}")
    return 0 if ratios[RATIO] <= TARGET else 1


def measure(
    scratch: Path, rows: int, keys: int, repeats: int, options: ExportOptions
) -> dict[str, list[float]]:
    """Seconds per run of `export_1m` and `asof_1m`, after a warm-up, interleaved."""
    views = [_view("users", "user_id", 7 * 86_400), _view("items", "item_id", 0)]
    root, entities = scratch / "offline", scratch / "entities.parquet"
    started = time.perf_counter()
    store = ParquetOfflineStore(str(root))
    events = sum(write_offline(store, view, keys, seed) for seed, view in enumerate(views))
    write_entities(entities, rows, keys)
    files = sum(1 for _ in root.rglob("*.parquet"))
    print(
        f"data: {events:,} events in {files} files, {rows:,} entity rows, "
        f"{time.perf_counter() - started:.1f}s"
    )
    exporter = TrainingSetExporter(Definitions(views), str(root), options=options)
    feature_set = f"projects/{PROJECT}/modelFeatureSets/ctr"
    variants: dict[str, Callable[[], int]] = {
        "export_1m": lambda: (
            exporter.export_entity_rows(
                feature_set, str(entities), str(scratch / "export.parquet")
            ).row_count
        ),
        "asof_1m": lambda: bare_asof(root, views, entities, scratch / "asof.parquet", options),
    }
    for run in variants.values():  # warm-up: page cache, DuckDB and pyarrow imports
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            elapsed, count = timed(run)
            assert count == rows, f"{name} wrote {count} rows, not {rows}"
            seconds[name].append(elapsed)
    return seconds


def summarize(
    seconds: dict[str, list[float]], rows: int
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Figures (median seconds, as BENCHMARKS.md names them) and the issue's ratio."""
    figures = {
        name: {
            "seconds": round(statistics.median(runs), 4),
            "min_s": round(min(runs), 4),
            "max_s": round(max(runs), 4),
            "n": len(runs),
            "rows": rows,
        }
        for name, runs in seconds.items()
    }
    ratio = figures["export_1m"]["seconds"] / figures["asof_1m"]["seconds"]
    return figures, {RATIO: ratio}


def print_table(figures: dict[str, dict[str, Any]], ratios: dict[str, float]) -> None:
    print(f"\n{'figure':<12}{'median s':>10}{'min s':>9}{'max s':>9}{'n':>4}{'rows':>11}")
    for name, figure in figures.items():
        print(
            f"{name:<12}{figure['seconds']:>10.3f}{figure['min_s']:>9.3f}"
            f"{figure['max_s']:>9.3f}{figure['n']:>4}{figure['rows']:>11,}"
        )
    verdict = "ok" if ratios[RATIO] <= TARGET else "MISSED"
    print(f"\n{RATIO} {ratios[RATIO]:.3f}  target <= {TARGET}  {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
