"""`make evaluate`: Recall@20 and NDCG@20 on MovieLens-100k's per-user temporal hold-out, for
the pipeline the running services serve, each of its recalls alone, and two classical
baselines, in one run on one split.

1. Split (`split.temporal_split`): each user's last 20% of ratings by time are the test
   period (20,000 of the 100,000), the training issue's hold-out.
2. A scratch stack (`bench.stack`: a scratch database, Triton and the four services as their
   own processes on free ports) over a scratch copy of the example repository whose ratings
   source holds the training part only, so every view and job (`user_history`, whose
   `recent_items` the `already_seen` filter reads, `item_popularity`, `item_similar`) is
   computed from it; the scratch repository's scenes are the example's home feed and its
   experiment, plus one scene per recall alone (`served.recall_scenes`).
3. The `dnn` ranker trained by `recstack train` on the training part only (its own samples
   hold out each user's last 20% of training ratings for its AUC), deployed and activated; the
   `item_embeddings` view it writes is then materialized for the vector recall.
4. Every user served by each scene over gRPC, their training items excluded in the request;
   ItemKNN and EASE computed here on the same training part (`baselines`).
5. The table printed, `bench/results/evaluate.json` and `bench/results/evaluate.png` written.
   Targets: the pipeline's NDCG@20 >= 1.5 x popular alone's and >= 0.9 x EASE's.

    python -m bench.evaluate [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from bench.evaluate import baselines, chart, served
from bench.evaluate.metrics import K, Quality, evaluate
from bench.evaluate.split import Split, items_by_user, temporal_split
from bench.harness import RESULTS_DIR, meets, scratch_database, write_result
from bench.stack import Services, cached_items, prepare, services, write_movielens
from infra.local import movielens
from shared.db import to_libpq
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient

NAME = "evaluate"
RECALLS = ("vector", "item_to_item", "category_affinity", "popular")
BASELINES = ("itemknn", "ease")
TARGETS = {"pipeline_vs_popular_ndcg": ">= 1.5", "pipeline_vs_ease_ndcg": ">= 0.9"}
SCENES_FILE = "evaluate.yaml"
# The views the scenes read from the item cache.
ITEM_VIEWS = ("movie_attributes", "item_popularity", "item_similar", movielens.EMBEDDINGS_VIEW)
READY_TIMEOUT_S = 180
# A user with a long history, to check every scene answers before measuring.
PROBE_USER = 1


def write_repository(scratch: Path, split: Split, epochs: int) -> Path:
    """The scratch repository on the training part, with the home feed and a scene per
    recall."""
    write_movielens(
        scratch,
        ratings=split.train,
        train_ratings=split.train,
        dnn={"epochs": epochs},
        scenes=True,
    )
    scenes = scratch / "feature_repo" / movielens.SCENES
    home = served.home_scene(list(yaml.safe_load_all((scenes / "home_feed.yaml").read_text())))
    budget = sum(recall["quota"] for recall in home["recalls"])
    documents = served.recall_scenes(home, budget)
    if [document["id"] for document in documents] != list(served.scene_ids(RECALLS).values())[1:]:
        raise RuntimeError(f"the home feed's recalls are not {RECALLS}")
    (scenes / SCENES_FILE).write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return scratch


def wait_ready(s: Services, project: str, client: served.Recommender) -> None:
    """Until the item cache holds every online row of the scenes' views, every recall scene
    returns a full list and the pipeline is ranked by the trained model (not degraded)."""
    expected = _online_rows(s, project)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        sizes = cached_items(s.recommend_metrics, project)
        answers = {
            system: client.recommend(scene, PROBE_USER, (), debug=True)
            for system, scene in served.scene_ids(RECALLS).items()
        }
        cache_full = all(sizes.get(view, 0) >= rows for view, rows in expected.items())
        lists_full = all(len(answer.items) == K for answer in answers.values())
        if cache_full and lists_full and not answers[served.PIPELINE].degraded:
            print(f"item cache {sizes}; every scene answers")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"not ready in {READY_TIMEOUT_S}s: cache {sizes} of {expected}, list sizes "
                f"{ {name: len(a.items) for name, a in answers.items()} }, pipeline degraded "
                f"{answers[served.PIPELINE].degraded_reason!r}"
            )
        time.sleep(2)


def _online_rows(s: Services, project: str) -> dict[str, int]:
    store = PostgresOnlineStore(to_libpq(s.url), min_size=1, max_size=1)
    definitions = RegistryClient(s.registry)
    try:
        rows = {}
        for name in ITEM_VIEWS:
            view = definitions.view_schema(project, name)
            keys, _ = store.scan(view, [view.features[0].name])
            rows[name] = len(keys)
        return rows
    finally:
        store.close()
        definitions.close()


def serve_all(s: Services, project: str, split: Split) -> dict[str, served.Served]:
    seen = items_by_user(split.train)
    client = served.Recommender.connect(s.recommend)
    try:
        wait_ready(s, project, client)
        found = {}
        for system, scene in served.scene_ids(RECALLS).items():
            found[system] = client.serve(scene, seen)
            print(f"{system}: {len(found[system].lists)} users in {found[system].seconds:.1f}s")
        return found
    finally:
        client.close()


def figure(quality: Quality) -> dict[str, Any]:
    return {
        f"recall_at_{K}": round(quality.recall, 4),
        f"ndcg_at_{K}": round(quality.ndcg, 4),
        "users": quality.users,
    }


def variant_figures(
    pipeline: served.Served, relevant: Mapping[int, set[int]]
) -> dict[str, dict[str, Any]]:
    """The pipeline's quality per experiment variant (each user is served by one)."""
    by_variant: dict[str, dict[int, set[int]]] = {}
    for user, variants in pipeline.variants.items():
        by_variant.setdefault(",".join(variants) or "none", {})[user] = relevant.get(user, set())
    return {
        name: figure(evaluate(pipeline.lists, users)) for name, users in sorted(by_variant.items())
    }


def report(figures: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, float]) -> None:
    print(f"\n{'system':<20}{f'Recall@{K}':>11}{f'NDCG@{K}':>10}{'users':>7}")
    for name, found in figures.items():
        print(
            f"{name:<20}{found[f'recall_at_{K}']:>11.4f}{found[f'ndcg_at_{K}']:>10.4f}"
            f"{found['users']:>7}"
        )
    print(f"\n{'ratio':<26}{'value':>8}  target")
    for name, value in ratios.items():
        verdict = "ok" if meets(value, TARGETS[name]) else "MISSED"
        print(f"{name:<26}{value:>8.3f}  {TARGETS[name]:<8}{verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate")
    parser.add_argument("--epochs", type=int, default=3, help="the ranker's (train.yaml: 3)")
    args = parser.parse_args(argv)
    if not movielens.data("ratings").is_file():
        raise SystemExit("MovieLens data is missing: run `make movielens-data`")
    started = time.perf_counter()
    split = temporal_split(pq.read_table(movielens.data("ratings")))
    relevant = items_by_user(split.test)
    print(f"split: {split.train.num_rows:,} train / {split.test.num_rows:,} test ratings")
    project = f"evaluate_{uuid.uuid4().hex[:8]}"
    with (
        scratch_database("bench_evaluate") as url,
        tempfile.TemporaryDirectory(prefix="recstack-evaluate-") as tmp,
    ):
        scratch = write_repository(Path(tmp), split, args.epochs)
        with services(url, scratch, NAME) as s:
            seconds = prepare(s, scratch, project, movielens.VIEWS)
            movielens.backfill(project, movielens.EMBEDDINGS_VIEW, s.connection[:4])
            served_started = time.perf_counter()
            systems = serve_all(s, project, split)
            seconds["serve"] = time.perf_counter() - served_started
    baselines_started = time.perf_counter()
    tuned = {"itemknn": baselines.itemknn(split.train), "ease": baselines.ease(split.train)}
    seconds["baselines"] = time.perf_counter() - baselines_started
    lists = {
        **{name: got.lists for name, got in systems.items()},
        **{name: found.lists for name, found in tuned.items()},
    }
    figures = {name: figure(evaluate(found, relevant)) for name, found in lists.items()}
    pipeline_ndcg = figures[served.PIPELINE][f"ndcg_at_{K}"]
    ratios = {
        "pipeline_vs_popular_ndcg": pipeline_ndcg / figures["popular"][f"ndcg_at_{K}"],
        "pipeline_vs_ease_ndcg": pipeline_ndcg / figures["ease"][f"ndcg_at_{K}"],
    }
    report(figures, ratios)
    seconds["total"] = time.perf_counter() - started
    extra = {
        "k": K,
        "split": {
            "users": len(relevant),
            "train_ratings": split.train.num_rows,
            "test_ratings": split.test.num_rows,
            "test_fraction": 0.2,
        },
        "pipeline_variants": variant_figures(systems[served.PIPELINE], relevant),
        "served": {
            name: {
                "seconds": round(got.seconds, 1),
                "empty_lists": got.empty,
                "degraded_retries": got.retried_degraded,
            }
            for name, got in systems.items()
        },
        "tuning": {
            name: {
                "setting": found.setting,
                "validation_ndcg_at_20": {
                    str(k): round(v, 4) for k, v in found.validation_ndcg.items()
                },
            }
            for name, found in tuned.items()
        },
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
    print(f"pipeline by variant: {extra['pipeline_variants']}")
    print(f"tuning: {extra['tuning']}")
    print(f"seconds: {extra['seconds']}")
    written = write_result(NAME, figures, ratios, TARGETS, extra)
    title = ", ".join(f"{name} {value:.3f} ({TARGETS[name]})" for name, value in ratios.items())
    png = chart.draw(figures, set(BASELINES), title, RESULTS_DIR / f"{NAME}.png")
    print(f"wrote {written} and {png}")
    return 0
