"""The recall stages: their cost per request on MovieLens-100k, and the vector index at scale.

1. MovieLens (`recall_<type>`): the example repository applied and every view materialized
   by real registry and materialization processes on a scratch database; the recommend
   service's item cache then loads the item views from that online store, and each recall
   stage of the example's home feed (`feature_repo/scenes/home_feed.yaml`) runs for every one
   of the 943 users, their features read from the same store beforehand (the pipeline reads
   them once per request, outside the stages). Figures: p50/p99 per call, as the service's
   per-stage histogram would see it. `item_embeddings` is the file `make train` writes; with
   none, a seeded random 16-d stand-in of the same shape is published in its place (same
   cost, meaningless neighbours: the JSON says which).
2. Vector index at 100,000 items x 64 dimensions (`ann_<index>`): clustered synthetic vectors
   (2,000 Gaussian clusters, as learnt embeddings are), cosine; for flat, IVF (4·sqrt(n)
   lists, 32 and 128 probed) and HNSW (M 32, ef 500 and 1,000) the build seconds, the search
   p50/p99 for k = 500 through `ItemVectors.search` (faiss plus the id mapping) over 300
   queries near the data, and recall@500 against the exact (flat) result.
   The bare limit is faiss' exact search of the same normalised matrix (`ann_bare`).
Prints a table and writes bench/results/recall.json. Needs `make movielens-data`.

    python -m bench.recall [--items 100000] [--dimension 64]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.harness import (
    RESULTS_DIR,
    file_roots_env,
    latency_figure,
    scratch_database,
    service_process,
    wait_serving,
    write_result,
)
from cli import main as recstack
from infra.local import movielens
from infra.local.ports import free_port
from services.recommend.adapters.registry import RegistryDefinitions
from services.recommend.item_cache import ItemCache, ItemTable
from services.recommend.pipeline import (
    BuildContext,
    StageDeps,
    StageKind,
    StageRequest,
    StageSettings,
)
from services.recommend.recall.vector_index import IndexSpec, VectorIndexes, build
from services.recommend.stages import default_stage_registry
from shared.db import to_libpq
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient
from shared.values import VT

NAME = "recall"
LOG_DIR = RESULTS_DIR / "logs"
USER_REFS = ("user_history:recent_items", "user_history:genre_counts")
ANN_QUERIES = 300
K = 500


# --- 1. the MovieLens recalls ----------------------------------------------------------------


def movielens_figures(scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    repo, embeddings_source = _repository(scratch)
    registry_port, materialization_port = free_port(), free_port()
    registry_address = f"127.0.0.1:{registry_port}"
    connection = ("--registry", registry_address)
    project = f"movielens_{uuid.uuid4().hex[:8]}"
    with scratch_database("bench_recall") as url:
        base = {"RECSTACK_DATABASE_URL": url, "RECSTACK_LOG_LEVEL": "WARNING"}
        base |= file_roots_env(scratch)
        with (
            service_process(
                "services.registry.server",
                {**base, "RECSTACK_GRPC_PORT": str(registry_port)},
                LOG_DIR / "recall-registry.log",
            ) as registry_process,
            service_process(
                "services.materialization.server",
                {
                    **base,
                    "RECSTACK_GRPC_PORT": str(materialization_port),
                    "RECSTACK_REGISTRY_ADDR": registry_address,
                },
                LOG_DIR / "recall-materialization.log",
            ) as materialization_process,
        ):
            wait_serving(registry_address, registry_process)
            wait_serving(f"127.0.0.1:{materialization_port}", materialization_process)
            if recstack(["apply", str(repo), "--project", project, *connection]):
                raise RuntimeError("recstack apply failed")
            started = time.perf_counter()
            materialization = ("--materialization", f"127.0.0.1:{materialization_port}")
            for view in (*movielens.VIEWS, movielens.EMBEDDINGS_VIEW):
                movielens.backfill(project, view, (*connection, *materialization))
            print(f"materialized in {time.perf_counter() - started:.1f}s")
            figures = _time_recalls(url, registry_address, project)
    return figures, {"item_embeddings": embeddings_source}


def _repository(scratch: Path) -> tuple[Path, str]:
    """The example repository beside copies of its data, with the trained item embeddings
    or, without them, a random stand-in of the same shape."""
    movielens.copy_feature_repo(scratch / "feature_repo")
    (scratch / "data").mkdir()
    for name in ("ratings", "movies", "users"):
        shutil.copy(movielens.data(name), scratch / "data" / f"{name}.parquet")
    trained = movielens.data(movielens.EMBEDDINGS_VIEW)
    target = scratch / "data" / f"{movielens.EMBEDDINGS_VIEW}.parquet"
    if trained.is_file():
        shutil.copy(trained, target)
        return scratch / "feature_repo", "trained"
    rng = np.random.default_rng(20261202)
    items = np.arange(1, 1683)
    vectors = rng.normal(0, 0.05, (len(items), 16)).astype(np.float32)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(items, pa.int64()),
                "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
                "event_ts": pa.array(
                    [datetime(1998, 4, 22, tzinfo=UTC)] * len(items), pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        target,
    )
    return scratch / "feature_repo", "random stand-in (no `make train` output)"


def _time_recalls(url: str, registry_address: str, project: str) -> dict[str, Any]:
    store = PostgresOnlineStore(to_libpq(url), min_size=1, max_size=2)
    definitions = RegistryDefinitions(RegistryClient(registry_address))
    try:
        # Never started: no refresh runs while the stages are timed.
        cache = ItemCache(store, definitions)
        users = _users(store, definitions, project)
        deps = StageDeps(cache, None, None, definitions, vectors=VectorIndexes(background=False))  # type: ignore[arg-type]
        scene = movielens.home_scene(project)
        registry = default_stage_registry()
        figures: dict[str, Any] = {}
        for config in scene.recalls:
            settings = StageSettings.from_proto(config)
            stage_type = registry.get(StageKind.RECALL, settings.type)
            assert stage_type is not None
            stage = stage_type.factory(settings, BuildContext("bench", scene, deps))
            started = time.perf_counter()
            stage.recall(users[0])  # warm: loads the views, builds the index or rankings
            warm = time.perf_counter() - started
            seconds, found = [], []
            for request in users:
                started = time.perf_counter()
                found.append(len(stage.recall(request)))
                seconds.append(time.perf_counter() - started)
            figures[f"recall_{settings.type}"] = {
                **latency_figure(seconds),
                "quota": settings.quota,
                "mean_found": round(float(np.mean(found)), 1),
                "first_call_s": round(warm, 3),
            }
        return figures
    finally:
        definitions.close()
        store.close()


def _users(store: PostgresOnlineStore, definitions: RegistryDefinitions, project: str) -> list:
    view = definitions.view_schema(project, "user_history")
    features = [ref.split(":", 1)[1] for ref in USER_REFS]
    keys, scanned = store.scan(view, features)
    return [
        StageRequest(
            "bench",
            project,
            str(key),
            {},
            10,
            user={ref: scanned.values[f][row] for ref, f in zip(USER_REFS, features, strict=True)},
            user_key=key,
        )
        for row, key in enumerate(keys)
    ]


# --- 2. the vector index at scale ------------------------------------------------------------


def ann_figures(items: int, dimension: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((2000, dimension)).astype(np.float32)
    assigned = rng.integers(0, len(centers), items)
    matrix = centers[assigned] + 0.6 * rng.standard_normal((items, dimension)).astype(np.float32)
    queries = centers[rng.integers(0, len(centers), ANN_QUERIES)]
    queries = queries + 0.6 * rng.standard_normal(queries.shape).astype(np.float32)
    table = _vector_table(matrix)
    normalized = np.ascontiguousarray(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    figures: dict[str, Any] = {"ann_bare": _bare(normalized, queries)}
    exact: list[set[str]] | None = None
    built: dict[str, tuple[Any, float]] = {}
    for name, spec in (
        ("flat", IndexSpec(index="flat", metric="cosine")),
        ("ivf_nprobe32", IndexSpec(index="ivf", metric="cosine", nprobe=32)),
        ("ivf_nprobe128", IndexSpec(index="ivf", metric="cosine", nprobe=128)),
        ("hnsw_ef500", IndexSpec(index="hnsw", metric="cosine", ef_search=500)),
        ("hnsw_ef1000", IndexSpec(index="hnsw", metric="cosine", ef_search=1000)),
    ):
        if spec.index in built:
            # The same index searched wider (search settings apply per call): no rebuild.
            index, seconds_built = built[spec.index]
            index = replace(index, spec=spec)
        else:
            started = time.perf_counter()
            index = build(table, "embedding", spec)
            seconds_built = time.perf_counter() - started
            built[spec.index] = (index, seconds_built)
        results, seconds = _search_all(index, queries)
        if exact is None:
            exact = results
        overlap = np.mean([len(a & b) / K for a, b in zip(results, exact, strict=True)])
        figures[f"ann_{name}"] = {
            **latency_figure(seconds),
            "build_s": round(seconds_built, 3),
            "recall_at_500": round(float(overlap), 4),
            "items": len(index),
        }
        print(f"{name}: built in {seconds_built:.1f}s, recall@500 {overlap:.3f}")
    return figures


def _vector_table(matrix: np.ndarray) -> ItemTable:
    view = ViewSchema(
        "bench",
        "item_vectors",
        1,
        "item_id",
        VT.VALUE_TYPE_INT64,
        (Feature("embedding", VT.VALUE_TYPE_FLOAT_LIST),),
    )
    keys = list(range(1, len(matrix) + 1))
    values = ViewColumns({"embedding": list(matrix)}, [None] * len(keys))
    return ItemTable.from_scan(view, keys, values, datetime.now(UTC))


def _search_all(index: Any, queries: np.ndarray) -> tuple[list[set[str]], list[float]]:
    index.search(index.query(queries[0], "warm-up"), K)
    results, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        found = index.search(index.query(query, "query"), K)
        seconds.append(time.perf_counter() - started)
        results.append(set(found))
    return results, seconds


def _bare(normalized: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """faiss' own exact search of the same vectors, with no id mapping or checks."""
    index = faiss.IndexFlatIP(normalized.shape[1])
    index.add(normalized)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    index.search(queries[:1], K)
    seconds = []
    for query in queries:
        started = time.perf_counter()
        index.search(query.reshape(1, -1), K)
        seconds.append(time.perf_counter() - started)
    return latency_figure(seconds)


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recall")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--skip-movielens", action="store_true")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if not args.skip_movielens:
        if not movielens.data("ratings").is_file():
            raise SystemExit("MovieLens data is missing: run `make movielens-data`")
        with tempfile.TemporaryDirectory(prefix="recstack-bench-recall-") as scratch:
            found, extra = movielens_figures(Path(scratch))
        figures |= found
    figures |= ann_figures(args.items, args.dimension)
    ratios = {"ann_flat_vs_bare": figures["ann_flat"]["p50_ms"] / figures["ann_bare"]["p50_ms"]}
    _print(figures, ratios)
    extra["ann"] = {"items": args.items, "dimension": args.dimension, "k": K}
    print(f"wrote {write_result(NAME, figures, ratios, {}, extra)}")
    return 0


def _print(figures: dict[str, Any], ratios: dict[str, float]) -> None:
    columns: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
        ("p50 ms", "p50_ms", lambda v: f"{v:.3f}"),
        ("p99 ms", "p99_ms", lambda v: f"{v:.3f}"),
        ("found", "mean_found", lambda v: f"{v:.0f}"),
        ("build s", "build_s", lambda v: f"{v:.2f}"),
        ("recall", "recall_at_500", lambda v: f"{v:.3f}"),
    )
    print(f"\n{'figure':<26}" + "".join(f"{title:>10}" for title, _, _ in columns))
    for name, figure in figures.items():
        cells = (fmt(figure[key]) if key in figure else "" for _, key, fmt in columns)
        print(f"{name:<26}" + "".join(f"{cell:>10}" for cell in cells))
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
