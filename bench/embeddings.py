"""Text-embedding production next to the bare model it stands on, in one run on this machine.

- `production`: 5,000 real review texts (the example's product reviews) through the full
  production path: Backfill over gRPC of a view whose `review_text_embedding` is produced by
  the `minilm` EmbeddingModel → the materialization service's embedder → Triton → both stores,
  until the job SUCCEEDED (texts/s, embedding cache emptied before each run).
- `in_process`: the same texts through the same encoder (tokenizers + onnxruntime, the code
  Triton's model.py runs) in this process, all in one call, so the encoder can sort them by
  length and pad as little as possible: the best this machine does without us (texts/s).
- `incremental_rerun`: a second Backfill of the same window over the same data: every text is
  in the embedding cache, so the model is never called (`seconds`, `model_calls`).
Production and in-process runs alternate after a warm-up; figures are medians.
Prints a table and writes bench/results/embeddings.json.

    python -m bench.embeddings [--texts 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from google.protobuf.duration_pb2 import Duration
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
)
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb

from bench.harness import (
    RESULTS_DIR,
    file_roots_env,
    print_table,
    scratch_database,
    service_process,
    wait_serving,
    write_result,
)
from examples.feature_repo.data import reviews as example_reviews
from infra.local.ports import free_port
from infra.local.text_encoder import MINILM_VERSION_DIR, encoder_module
from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, TritonServer
from shared.channels import open_channel
from shared.db import to_libpq

NAME = "embeddings"
PROJECT = "bench"
MODEL = "minilm"
DIMENSION = 384
BATCH_SIZE = 32
CONCURRENCY = 4
MAX_INPUT_TOKENS = 256
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
LOG_DIR = RESULTS_DIR / "logs"
TARGETS = {"production_vs_in_process": ">= 0.6"}
EMB = embedding_model_pb2.EmbeddingModel


def review_texts(count: int) -> list[str]:
    """The first `count` distinct, non-empty review texts of the example dataset."""
    example_reviews.main()
    table = pq.read_table(example_reviews.OUTPUT, columns=["Review Text"])
    texts = pc.drop_null(table.column("Review Text")).to_pylist()
    distinct = list(dict.fromkeys(text for text in texts if text.strip()))
    if len(distinct) < count:
        raise SystemExit(f"the example has only {len(distinct)} distinct review texts")
    return distinct[:count]


def write_source(path: Path, texts: list[str]) -> None:
    count = len(texts)
    pq.write_table(
        pa.table(
            {
                "review_id": pa.array(range(count), pa.int64()),
                "review_text": texts,
                "event_ts": pa.array(
                    [DAY0 + timedelta(seconds=i) for i in range(count)],
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        ),
        path,
    )


def define(
    registry: registry_service_pb2_grpc.RegistryServiceStub, view_id: str, source: Path
) -> None:
    field = feature_view_pb2.FeatureField
    vt = value_pb2.ValueType
    definitions = [
        rpb.Definition(
            id="review",
            entity=entity_pb2.Entity(join_key="review_id", key_type=vt.VALUE_TYPE_INT64),
        ),
        rpb.Definition(
            id="reviews",
            data_source=data_source_pb2.DataSource(
                file=data_source_pb2.FileSource(
                    path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                ),
                event_timestamp_column="event_ts",
            ),
        ),
        rpb.Definition(
            id=MODEL,
            embedding_model=EMB(
                model_type=EMB.MODEL_TYPE_TEXT_EMBEDDING,
                provider=EMB.PROVIDER_TRITON,
                model_name=MODEL,
                dimension=DIMENSION,
                max_input_tokens=MAX_INPUT_TOKENS,
                batch_size=BATCH_SIZE,
                concurrency=CONCURRENCY,
                call_timeout=Duration(seconds=60),
            ),
        ),
        rpb.Definition(
            id=view_id,
            feature_view=feature_view_pb2.FeatureView(
                entity="review",
                source="reviews",
                type=feature_view_pb2.FeatureView.TYPE_BATCH,
                online_enabled=True,
                offline_enabled=True,
                fields=[
                    field(name="review_id", value_type=vt.VALUE_TYPE_INT64),
                    field(name="review_text", value_type=vt.VALUE_TYPE_STRING),
                    field(
                        name="review_text_embedding",
                        value_type=vt.VALUE_TYPE_FLOAT_LIST,
                        production=feature_view_pb2.FeatureProduction(
                            transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
                            input_field="review_text",
                            embedding_model=MODEL,
                        ),
                    ),
                ],
            ),
        ),
    ]
    registry.Apply(rpb.ApplyRequest(parent=f"projects/{PROJECT}", definitions=definitions))


def backfill(
    materialization: materialization_service_pb2_grpc.MaterializationServiceStub,
    view_id: str,
    *,
    rerun: bool = False,
) -> tuple[float, job_pb2.Job]:
    """Seconds from Backfill to SUCCEEDED, and the finished job."""
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(DAY0)
    window.end_time.FromDatetime(DAY0 + timedelta(days=1))
    statuses = [data_interval_pb2.DataInterval.STATUS_COMPLETE] if rerun else []
    started = time.perf_counter()
    [job] = materialization.Backfill(
        mpb.BackfillRequest(
            feature_view=f"projects/{PROJECT}/featureViews/{view_id}",
            window=window,
            statuses=statuses,
        )
    ).jobs
    last = job
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=900):
        last = update.job
    elapsed = time.perf_counter() - started
    if last.state != job_pb2.Job.STATE_SUCCEEDED:
        raise RuntimeError(
            f"{job.name} ended {job_pb2.Job.State.Name(last.state)}: {last.error_message}"
        )
    return elapsed, last


def in_process_once(encoder: Any, texts: list[str]) -> float:
    """All texts in one call: the encoder sorts them by length, so padding is minimal."""
    started = time.perf_counter()
    encoder.encode(texts, MAX_INPUT_TOKENS)
    return time.perf_counter() - started


@contextmanager
def stack(url: str, scratch: Path) -> Iterator[tuple[Any, Any]]:
    """Triton, the registry and materialization, as the stack runs them; yields the stubs."""
    triton = TritonServer(DEFAULT_MODEL_REPOSITORY, log_path=LOG_DIR / "embeddings-triton.log")
    triton.start()
    try:
        triton.wait_ready(120)
        registry_port, materialization_port = free_port(), free_port()
        base = {
            "RECSTACK_DATABASE_URL": url,
            "RECSTACK_LOG_LEVEL": "WARNING",
            **file_roots_env(scratch),
        }
        registry_address = f"127.0.0.1:{registry_port}"
        materialization_address = f"127.0.0.1:{materialization_port}"
        with (
            service_process(
                "services.registry.server",
                {**base, "RECSTACK_GRPC_PORT": str(registry_port)},
                LOG_DIR / "embeddings-registry.log",
            ) as registry_process,
            service_process(
                "services.materialization.server",
                {
                    **base,
                    "RECSTACK_GRPC_PORT": str(materialization_port),
                    "RECSTACK_REGISTRY_ADDR": registry_address,
                    "RECSTACK_TRITON_ADDR": triton.grpc_address,
                },
                LOG_DIR / "embeddings-materialization.log",
            ) as materialization_process,
            open_channel(registry_address) as registry_channel,
            open_channel(materialization_address) as materialization_channel,
        ):
            wait_serving(registry_address, registry_process)
            wait_serving(materialization_address, materialization_process)
            yield (
                registry_service_pb2_grpc.RegistryServiceStub(registry_channel),
                materialization_service_pb2_grpc.MaterializationServiceStub(
                    materialization_channel
                ),
            )
    finally:
        triton.stop()


def empty_cache(url: str) -> None:
    with psycopg.connect(to_libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE embeddings.text_embeddings")


def measure(url: str, scratch: Path, texts: list[str], repeats: int) -> dict[str, Any]:
    source = scratch / "reviews.parquet"
    write_source(source, texts)
    encoder = encoder_module().TextEncoder(MINILM_VERSION_DIR)
    seconds: dict[str, list[float]] = {"production": [], "in_process": []}
    with stack(url, scratch) as (registry, materialization):
        # Warm-up: Triton's first batches, the page cache, the encoder's first session runs.
        define(registry, "warmup", source)
        backfill(materialization, "warmup")
        in_process_once(encoder, texts[:500])
        for run in range(1, repeats + 1):
            view_id = f"reviews_{run}"
            define(registry, view_id, source)
            empty_cache(url)
            elapsed, job = backfill(materialization, view_id)
            if job.progress.texts_embedded != len(texts):
                raise RuntimeError(
                    f"run {run} embedded {job.progress.texts_embedded} texts, not {len(texts)}"
                )
            seconds["production"].append(elapsed)
            seconds["in_process"].append(in_process_once(encoder, texts))
            print(
                f"run {run}: production {seconds['production'][-1]:.2f}s, "
                f"in-process {seconds['in_process'][-1]:.2f}s"
            )
        rerun_seconds, rerun = backfill(materialization, f"reviews_{repeats}", rerun=True)
    return {
        "seconds": seconds,
        "rerun": {
            "seconds": round(rerun_seconds, 3),
            "model_calls": rerun.progress.embedding_calls,
            "cache_hits": rerun.progress.embedding_cache_hits,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embeddings")
    parser.add_argument("--texts", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    texts = review_texts(args.texts)
    with (
        scratch_database("bench_embeddings") as url,
        tempfile.TemporaryDirectory(prefix="recstack-bench-embeddings-") as scratch,
    ):
        measured = measure(url, Path(scratch), texts, args.repeats)
    figures: dict[str, dict[str, Any]] = {
        name: {
            "texts_per_s": round(len(texts) / statistics.median(runs), 1),
            "texts": len(texts),
            "n": len(runs),
        }
        for name, runs in measured["seconds"].items()
    }
    figures["incremental_rerun"] = measured["rerun"]
    ratios = {
        "production_vs_in_process": figures["production"]["texts_per_s"]
        / figures["in_process"]["texts_per_s"]
    }
    print_table(figures, ratios, TARGETS)
    for name in measured["seconds"]:
        figure = figures[name]
        print(f"{name:<18}{figure['texts_per_s']:>10,.1f} texts/s (median of {figure['n']})")
    rerun = measured["rerun"]
    print(
        f"incremental_rerun {rerun['seconds']:.3f} s, {rerun['model_calls']} model calls, "
        f"{rerun['cache_hits']} cache hits"
    )
    print(f"wrote {write_result(NAME, figures, ratios, TARGETS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
