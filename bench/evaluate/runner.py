"""`make evaluate`: Recall@20 and NDCG@20 on MovieLens-100k's per-user temporal hold-out, for
the pipeline the running services serve, each of its recalls alone, and two classical
baselines, in one run on one split.

1. Split (`split.temporal_split`): each user's last 20% of ratings by time are the test
   period (20,000 of the 100,000), the training issue's hold-out.
2. A scratch stack (`bench.stack`: a scratch database, Triton and the four services as their
   own processes on free ports) over a scratch copy of the example repository whose ratings
   source holds the training part only, so every view and job (`user_history`, whose
   `recent_items` the `already_seen` filter reads, `item_popularity`, `item_similar`) is
   computed from it. Its scenes (`served.scenes`) replace the example's `home_feed.yaml`: the
   home feed itself, one scene per variant of its experiment, one per recall alone.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.evaluate import baselines, chart, served
from bench.evaluate.metrics import K, Quality, evaluate
from bench.evaluate.split import TEST_FRACTION, Split, items_by_user, temporal_split
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
HOME_FEED = "home_feed.yaml"
SCENES_FILE = "evaluate.yaml"
# The views the scenes read from the item cache.
ITEM_VIEWS = ("movie_attributes", "item_popularity", "item_similar", movielens.EMBEDDINGS_VIEW)
READY_TIMEOUT_S = 180
# A user with a long history, to check every scene answers before measuring.
PROBE_USER = 1


def write_repository(scratch: Path, split: Split, epochs: int) -> dict[str, str]:
    """The scratch repository on the training part, its scenes those of `served.scenes`;
    the scene of each system."""
    write_movielens(
        scratch,
        ratings=split.train,
        train_ratings=split.train,
        dnn={"epochs": epochs},
        scenes=True,
    )
    folder = scratch / "feature_repo" / movielens.SCENES
    home_feed = folder / HOME_FEED
    documents = list(yaml.safe_load_all(home_feed.read_text()))
    budget = sum(recall["quota"] for recall in served.home_scene(documents)["recalls"])
    evaluated = served.scenes(documents, budget)
    missing = set(RECALLS) - set(evaluated.systems)
    if missing:
        raise RuntimeError(f"the home feed has no {sorted(missing)} recall")
    home_feed.unlink()
    (folder / SCENES_FILE).write_text(yaml.safe_dump_all(evaluated.documents, sort_keys=False))
    return evaluated.systems


def wait_ready(
    s: Services,
    project: str,
    client: served.Recommender,
    systems: Mapping[str, str],
    expected: Mapping[str, int],
) -> None:
    """Until the item cache holds the `expected` rows of each view, every scene returns a
    full list and the pipeline is ranked by the trained model (not degraded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        sizes = cached_items(s.recommend_metrics, project)
        answers = {
            system: client.recommend(scene, PROBE_USER, (), debug=True)
            for system, scene in systems.items()
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


def online_rows(s: Services, project: str, split: Split) -> dict[str, int]:
    """The online rows of each item view the scenes read, once the online store is checked
    to hold the training part's counts: each user's and item's 365-day rating count (the whole
    data set) is their training count, and no user's `recent_items` holds a test item."""
    store = PostgresOnlineStore(to_libpq(s.url), min_size=1, max_size=1)
    definitions = RegistryClient(s.registry)
    try:
        for key, view, feature in (
            ("user_id", "user_history", "user_ratings_365d"),
            ("item_id", "item_popularity", "item_ratings_365d"),
        ):
            keys, columns = store.scan(definitions.view_schema(project, view), [feature])
            online = dict(zip(keys, columns.values[feature], strict=True))
            _check_counts(view, online, _counts(split.train, key))
        keys, columns = store.scan(
            definitions.view_schema(project, "user_history"), ["recent_items"]
        )
        seen = items_by_user(split.train)
        for user, recent in zip(keys, columns.values["recent_items"], strict=True):
            if not set(recent or ()) <= seen.get(user, set()):
                raise RuntimeError(f"user_history of user {user} holds a test-period item")
        rows = {}
        for name in ITEM_VIEWS:
            view = definitions.view_schema(project, name)
            rows[name] = len(store.scan(view, [view.features[0].name])[0])
        return rows
    finally:
        store.close()
        definitions.close()


def _counts(ratings: pa.Table, column: str) -> dict[int, int]:
    keys, counts = np.unique(ratings.column(column).to_numpy(), return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist(), strict=True))


def _check_counts(view: str, online: Mapping[int, int], training: Mapping[int, int]) -> None:
    if online != training:
        wrong = sorted(
            key for key in online.keys() | training.keys() if online.get(key) != training.get(key)
        )
        raise RuntimeError(
            f"{view} online does not count the training ratings alone: keys {wrong[:5]} "
            f"({len(wrong)} in all) differ"
        )


def serve_all(
    s: Services, project: str, split: Split, systems: Mapping[str, str]
) -> dict[str, served.Served]:
    expected = online_rows(s, project, split)
    seen = items_by_user(split.train)
    client = served.Recommender.connect(s.recommend)
    try:
        wait_ready(s, project, client, systems, expected)
        found = {}
        for system, scene in systems.items():
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


def ndcg_ratios(qualities: Mapping[str, Quality]) -> dict[str, float]:
    """The targets' ratios, then the pipeline against classical most-popular (informative)."""
    ndcg = {name: quality.ndcg for name, quality in qualities.items()}
    pipeline = ndcg[served.PIPELINE]
    return {
        "pipeline_vs_popular_ndcg": pipeline / ndcg["popular"],
        "pipeline_vs_ease_ndcg": pipeline / ndcg["ease"],
        "pipeline_vs_popular_365d_ndcg": pipeline / ndcg[served.ALL_HISTORY[0]],
    }


def report(figures: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, float]) -> None:
    print(f"\n{'system':<22}{f'Recall@{K}':>11}{f'NDCG@{K}':>10}{'users':>7}")
    for name, found in figures.items():
        print(
            f"{name:<22}{found[f'recall_at_{K}']:>11.4f}{found[f'ndcg_at_{K}']:>10.4f}"
            f"{found['users']:>7}"
        )
    print(f"\n{'ratio':<31}{'value':>8}  target")
    for name, value in ratios.items():
        target = TARGETS.get(name, "")
        verdict = "" if not target else ("ok" if meets(value, target) else "MISSED")
        print(f"{name:<31}{value:>8.3f}  {target:<8}{verdict}")


def run_stack(split: Split, epochs: int) -> tuple[dict[str, served.Served], dict[str, float]]:
    """The scratch stack set up on the training part, and every served system's lists."""
    project = f"evaluate_{uuid.uuid4().hex[:8]}"
    with (
        scratch_database("bench_evaluate") as url,
        tempfile.TemporaryDirectory(prefix="recstack-evaluate-") as tmp,
    ):
        scratch = Path(tmp)
        systems = write_repository(scratch, split, epochs)
        with services(url, scratch, NAME) as s:
            seconds = prepare(s, scratch, project, movielens.VIEWS)
            started = time.perf_counter()
            movielens.backfill(project, movielens.EMBEDDINGS_VIEW, s.connection)
            seconds["materialize"] += time.perf_counter() - started
            started = time.perf_counter()
            lists = serve_all(s, project, split, systems)
            seconds["serve"] = time.perf_counter() - started
    return lists, seconds


def details(
    split: Split,
    lists: Mapping[str, served.Served],
    tuned: Mapping[str, baselines.Tuned],
    seconds: Mapping[str, float],
) -> dict[str, Any]:
    """What the JSON holds besides the figures: the split, how the systems were served, the
    baselines' tuning, the time each step took."""
    return {
        "k": K,
        "split": {
            "users": len(items_by_user(split.test)),
            "train_ratings": split.train.num_rows,
            "test_ratings": split.test.num_rows,
            "test_fraction": TEST_FRACTION,
        },
        "served": {
            name: {
                "seconds": round(got.seconds, 1),
                "empty_lists": got.empty,
                "degraded_retries": got.retried_degraded,
                "routed_by_experiment": got.routed,
            }
            for name, got in lists.items()
        },
        "tuning": {
            name: {
                "setting": found.setting,
                f"validation_ndcg_at_{K}": {
                    str(setting): round(ndcg, 4) for setting, ndcg in found.validation_ndcg.items()
                },
            }
            for name, found in tuned.items()
        },
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate")
    parser.add_argument("--epochs", type=int, default=3, help="the ranker's (train.yaml: 3)")
    args = parser.parse_args(argv)
    if not movielens.data("ratings").is_file():
        raise SystemExit("MovieLens data is missing: run `make movielens-data`")
    started = time.perf_counter()
    split = temporal_split(pq.read_table(movielens.data("ratings")))
    print(f"split: {split.train.num_rows:,} train / {split.test.num_rows:,} test ratings")
    lists, seconds = run_stack(split, args.epochs)
    baselines_started = time.perf_counter()
    tuned = {"itemknn": baselines.itemknn(split.train), "ease": baselines.ease(split.train)}
    seconds["baselines"] = time.perf_counter() - baselines_started
    relevant = items_by_user(split.test)
    every = {
        **{name: got.lists for name, got in lists.items()},
        **{name: found.lists for name, found in tuned.items()},
    }
    qualities = {name: evaluate(found, relevant) for name, found in every.items()}
    figures = {name: figure(quality) for name, quality in qualities.items()}
    ratios = ndcg_ratios(qualities)
    report(figures, ratios)
    seconds["total"] = time.perf_counter() - started
    extra = details(split, lists, tuned, seconds)
    print(f"tuning: {extra['tuning']}\nseconds: {extra['seconds']}")
    written = write_result(NAME, figures, ratios, TARGETS, extra)
    title = ", ".join(f"{name} {ratios[name]:.3f} ({target})" for name, target in TARGETS.items())
    png = chart.draw(figures, set(BASELINES), title, RESULTS_DIR / f"{NAME}.png")
    print(f"wrote {written} and {png}")
    return 0
