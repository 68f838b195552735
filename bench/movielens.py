"""MovieLens-100k end to end on the full data: materialization of every view, then the export.

Through real registry and materialization service processes on a scratch database:
- `materialize_all`: the example repository (`examples/movielens/feature_repo`) applied with
  the CLI, its five views over ratings, movies and users backfilled over
  1997-09-20..1998-04-23 at once (the service runs two jobs at a time), seconds from the
  first Backfill until every job SUCCEEDED; each view's own job time as
  `materialize_<view>` (its start to its end, as the job reports them);
- `samples`: `training.samples` on the 100,000 ratings (4 negatives each, per-user split);
- `export_train`: ExportTrainingSet of the `ranking` feature set (12 features of 4 views)
  over the train rows, over gRPC, until the Parquet file is in place;
- `asof_train`: the bare limit of that export, the same four `ASOF LEFT JOIN`s of the same
  offline files by DuckDB in this process, written to Parquet, without tie-breaking or
  keeping the input order.
The export pair runs after a warm-up, interleaved; the figure is the median.
Prints a table and writes bench/results/movielens.json. Needs `make movielens-data`.

    python -m bench.movielens [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb

from bench.harness import (
    REPO_ROOT,
    RESULTS_DIR,
    file_roots_env,
    scratch_database,
    service_process,
    wait_serving,
    write_result,
)
from cli import main as recstack
from infra.local import movielens
from infra.local.ports import free_port
from shared.channels import open_channel
from training.samples import write_samples

NAME = "movielens"
EXAMPLE = REPO_ROOT / "examples" / "movielens"
RATINGS = EXAMPLE / "data" / "ratings.parquet"
VIEWS = ("movie_attributes", "user_profile", "item_popularity", "user_history", "item_similar")
# The features of the `ranking` set, per view and join key (see model_feature_sets.yaml).
RANKING = {
    ("user_profile", "user_id"): ("age", "gender", "occupation"),
    ("user_history", "user_id"): (
        "genre_counts",
        "recent_items",
        "user_ratings_365d",
        "user_mean_rating_365d",
    ),
    ("movie_attributes", "item_id"): ("genres", "release_year"),
    ("item_popularity", "item_id"): (
        "item_ratings_30d",
        "item_ratings_365d",
        "item_mean_rating_365d",
    ),
}
LOG_DIR = RESULTS_DIR / "logs"
TARGETS = {"export_train_vs_asof_train": "<= 2.0"}


def materialize_all(
    materialization: materialization_service_pb2_grpc.MaterializationServiceStub, project: str
) -> dict[str, dict[str, float]]:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromJsonString("1997-09-20T00:00:00Z")
    window.end_time.FromJsonString("1998-04-23T00:00:00Z")
    started = time.perf_counter()
    jobs = [
        materialization.Backfill(
            mpb.BackfillRequest(
                feature_view=f"projects/{project}/featureViews/{view}", window=window
            )
        ).jobs[0]
        for view in VIEWS
    ]
    figures = {}
    for view, job in zip(VIEWS, jobs, strict=True):
        last = job
        for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=600):
            last = update.job
        if last.state != job_pb2.Job.STATE_SUCCEEDED:
            raise RuntimeError(f"{view}: {job_pb2.Job.State.Name(last.state)} {last.error_message}")
        seconds = (last.end_time.ToDatetime() - last.start_time.ToDatetime()).total_seconds()
        figures[f"materialize_{view}"] = {
            "seconds": round(seconds, 3),
            "rows": last.progress.rows_written_offline,
        }
    figures["materialize_all"] = {
        "seconds": round(time.perf_counter() - started, 3),
        "rows": sum(figure["rows"] for figure in figures.values()),
    }
    return figures


def export_once(
    materialization: materialization_service_pb2_grpc.MaterializationServiceStub,
    project: str,
    entities: Path,
    output: Path,
) -> tuple[float, int]:
    started = time.perf_counter()
    response = materialization.ExportTrainingSet(
        mpb.ExportTrainingSetRequest(
            model_feature_set=f"projects/{project}/modelFeatureSets/ranking",
            entity_parquet_path=str(entities),
            output_path=str(output),
        ),
        timeout=600,
    )
    return time.perf_counter() - started, response.row_count


def asof_once(offline: Path, project: str, entities: Path, output: Path) -> float:
    """The same joins, bare: each view's latest event at or before the row's time."""
    ctes, columns, joins = [], [], []
    for index, ((view, key), features) in enumerate(RANKING.items()):
        alias = f"v{index}"
        files = f"'{offline}/{project}/{view}/v1/**/*.parquet'"
        ctes.append(f"{alias} AS (SELECT {key}, event_ts, {', '.join(features)} FROM {files})")
        columns += [f"{alias}.{feature} AS {view}__{feature}" for feature in features]
        joins.append(
            f"ASOF LEFT JOIN {alias} ON e.{key} = {alias}.{key} AND e.event_ts >= {alias}.event_ts"
        )
    query = (
        f"WITH {', '.join(ctes)} SELECT e.*, {', '.join(columns)} "
        f"FROM read_parquet('{entities}') AS e {' '.join(joins)}"
    )
    connection = duckdb.connect(config={"threads": 2, "memory_limit": "2GB"})
    try:
        connection.execute("SET TimeZone = 'UTC'")
        started = time.perf_counter()
        connection.execute(f"COPY ({query}) TO '{output}' (FORMAT parquet)")
        return time.perf_counter() - started
    finally:
        connection.close()


def measure(scratch: Path, repeats: int) -> dict[str, dict[str, float]]:
    registry_port, materialization_port = free_port(), free_port()
    registry_address = f"127.0.0.1:{registry_port}"
    materialization_address = f"127.0.0.1:{materialization_port}"
    offline = scratch / "offline"
    project = f"movielens_{uuid.uuid4().hex[:8]}"
    with scratch_database("bench_movielens") as url:
        base = {
            "RECSTACK_DATABASE_URL": url,
            "RECSTACK_LOG_LEVEL": "WARNING",
            **file_roots_env(scratch, EXAMPLE),
        }
        with (
            service_process(
                "services.registry.server",
                {**base, "RECSTACK_GRPC_PORT": str(registry_port)},
                LOG_DIR / "movielens-registry.log",
            ) as registry_process,
            service_process(
                "services.materialization.server",
                {
                    **base,
                    "RECSTACK_GRPC_PORT": str(materialization_port),
                    "RECSTACK_REGISTRY_ADDR": registry_address,
                },
                LOG_DIR / "movielens-materialization.log",
            ) as materialization_process,
            open_channel(materialization_address) as channel,
        ):
            wait_serving(registry_address, registry_process)
            wait_serving(materialization_address, materialization_process)
            # The scenes are the recommend service's, which this benchmark does not run.
            repo = str(movielens.copy_feature_repo(scratch / "feature_repo"))
            (scratch / "data").symlink_to(EXAMPLE / "data")
            if recstack(["apply", repo, "--project", project, "--registry", registry_address]):
                raise RuntimeError("recstack apply failed")
            materialization = materialization_service_pb2_grpc.MaterializationServiceStub(channel)
            figures = materialize_all(materialization, project)
            started = time.perf_counter()
            samples = write_samples(RATINGS, scratch / "samples")
            figures["samples"] = {
                "seconds": round(time.perf_counter() - started, 3),
                "rows": samples.train_rows + samples.test_rows,
            }
            entities, output = samples.train, scratch / "train_features.parquet"
            export_once(materialization, project, entities, output)  # warm-up
            asof_once(offline, project, entities, scratch / "asof.parquet")
            runs: dict[str, list[float]] = {"export_train": [], "asof_train": []}
            for run in range(1, repeats + 1):
                seconds, rows = export_once(materialization, project, entities, output)
                runs["export_train"].append(seconds)
                runs["asof_train"].append(
                    asof_once(offline, project, entities, scratch / "asof.parquet")
                )
                print(f"run {run}: export {seconds:.2f}s, bare asof {runs['asof_train'][-1]:.2f}s")
    for name, seconds in runs.items():
        figures[name] = {
            "seconds": round(statistics.median(seconds), 3),
            "rows": rows,
            "n": len(seconds),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.movielens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not RATINGS.is_file():
        raise SystemExit(f"{RATINGS} is missing: run `make movielens-data`")
    with tempfile.TemporaryDirectory(prefix="recstack-bench-movielens-") as scratch:
        figures = measure(Path(scratch), args.repeats)
    ratios = {
        "export_train_vs_asof_train": figures["export_train"]["seconds"]
        / figures["asof_train"]["seconds"]
    }
    print(f"\n{'figure':<30}{'seconds':>9}{'rows':>10}")
    for name, figure in figures.items():
        print(f"{name:<30}{figure['seconds']:>9.3f}{figure['rows']:>10,}")
    print(f"\n{'ratio':<30}{'value':>9}  target")
    for name, value in ratios.items():
        print(f"{name:<30}{value:>9.3f}  {TARGETS[name]}")
    print(f"wrote {write_result(NAME, figures, ratios, TARGETS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
