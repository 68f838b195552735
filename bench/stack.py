"""The MovieLens stack that benchmarks run on: every service a process of its own on free
ports, a scratch database and a scratch copy of the example repository.

`write_movielens` copies the example's feature repository, FG and training config into a
scratch folder beside the data they read, with the ratings the views are built from and the
ratings the ranker trains on given by the caller (`bench.recommend` trains on a subset of
users for speed; `bench.evaluate` hides each user's test period from both). `services` starts
Triton (the repository's models and a scratch repository the registry deploys trained
versions to) and the registry, materialization, serving and recommend services; `prepare`
applies the repository, materializes the views and trains, deploys and activates the ranker.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.harness import RESULTS_DIR, file_roots_env, service_process, wait_serving
from cli import main as recstack
from infra.local import movielens
from infra.local.ports import free_port
from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, TritonServer

LOG_DIR = RESULTS_DIR / "logs"
# Where `write_movielens` puts the ranker's samples, relative to the scratch training config.
TRAIN_RATINGS = "data/ratings_train.parquet"


def write_movielens(
    scratch: Path,
    *,
    ratings: pa.Table,
    train_ratings: pa.Table,
    dnn: Mapping[str, Any] | None = None,
    scenes: bool = False,
) -> Path:
    """In `scratch`: the feature repository (with its scenes when `scenes`), `fg.json`, and
    `train.yaml` with `dnn` overrides, whose samples are `train_ratings`; `data/` holds the
    movies and users, `ratings` as the views' ratings source, and `train_ratings`."""
    movielens.copy_feature_repo(scratch / "feature_repo", scenes=scenes)
    shutil.copy(movielens.EXAMPLE / "fg.json", scratch / "fg.json")
    (scratch / "data").mkdir()
    for name in ("movies", "users"):
        shutil.copy(movielens.data(name), scratch / "data" / f"{name}.parquet")
    pq.write_table(ratings, scratch / "data" / "ratings.parquet")
    pq.write_table(train_ratings, scratch / TRAIN_RATINGS)
    config = yaml.safe_load((movielens.EXAMPLE / "train.yaml").read_text())
    config["samples"] = {**config["samples"], "interactions": TRAIN_RATINGS}
    config["dnn"] = {**config["dnn"], **(dnn or {})}
    (scratch / "train.yaml").write_text(yaml.safe_dump(config))
    return scratch


@dataclass(frozen=True)
class Services:
    url: str
    triton: TritonServer
    registry: str
    materialization: str
    serving: str
    recommend: str
    recommend_metrics: str

    @property
    def connection(self) -> tuple[str, ...]:
        """The CLI's flags for the registry and materialization (materialize, train)."""
        return ("--registry", self.registry, "--materialization", self.materialization)


@contextmanager
def services(url: str, scratch: Path, name: str) -> Iterator[Services]:
    """Triton and the four services on free ports over database `url`, logs under
    bench/results/logs/{name}-*.log; all stopped on exit."""
    models = scratch / "models"
    models.mkdir()
    # The repository's own `ranker` is loaded only because Triton starts with one model;
    # the trained version is loaded into the scratch repository by the registry's deploy.
    triton = TritonServer(
        [DEFAULT_MODEL_REPOSITORY, models],
        models=["ranker"],
        log_path=LOG_DIR / f"{name}-triton.log",
    )
    ports = {key: free_port() for key in ("registry", "mat", "serving", "rec", "metrics")}
    address = {key: f"127.0.0.1:{port}" for key, port in ports.items()}
    base = {
        "RECSTACK_DATABASE_URL": url,
        "RECSTACK_LOG_LEVEL": "WARNING",
        "RECSTACK_REGISTRY_ADDR": address["registry"],
        "RECSTACK_SERVING_ADDR": address["serving"],
        "RECSTACK_TRITON_ADDR": triton.grpc_address,
        **file_roots_env(scratch),
    }
    with ExitStack() as stack:
        triton.start()
        stack.callback(triton.stop)
        triton.wait_ready(120)
        for key, module, extra in (
            ("registry", "services.registry.server", {}),
            ("mat", "services.materialization.server", {}),
            ("serving", "services.serving.server", {}),
            (
                "rec",
                "services.recommend.server",
                {
                    "RECSTACK_METRICS_PORT": str(ports["metrics"]),
                    "RECSTACK_REQUIRED_MODELS": json.dumps(["ranker"]),
                },
            ),
        ):
            env = {**base, "RECSTACK_GRPC_PORT": str(ports[key]), **extra}
            process = stack.enter_context(
                service_process(module, env, LOG_DIR / f"{name}-{key}.log")
            )
            wait_serving(address[key], process, 120)
        yield Services(
            url,
            triton,
            address["registry"],
            address["mat"],
            address["serving"],
            address["rec"],
            f"http://127.0.0.1:{ports['metrics']}/metrics",
        )


def run(*args: str) -> None:
    code = recstack(list(args))
    if code != 0:
        raise RuntimeError(f"`recstack {' '.join(args)}` exited {code}")


def prepare(s: Services, scratch: Path, project: str, views: Sequence[str]) -> dict[str, float]:
    """Apply the scratch repository, materialize `views`, then train, deploy and activate the
    ranker; seconds per step."""
    seconds = {}
    started = time.perf_counter()
    repo = str(scratch / "feature_repo")
    run("apply", repo, "--project", project, "--registry", s.registry, "--recommend", s.recommend)
    for view in views:
        movielens.backfill(project, view, s.connection)
    seconds["materialize"] = time.perf_counter() - started
    print(f"materialized in {seconds['materialize']:.1f}s")
    started = time.perf_counter()
    run(
        "train",
        str(scratch / "train.yaml"),
        "--project",
        project,
        "--work-dir",
        str(scratch / "training"),
        "--model-repository",
        str(scratch / "models"),
        *s.connection,
    )
    seconds["train"] = time.perf_counter() - started
    print(f"trained and deployed in {seconds['train']:.1f}s")
    return seconds


def cached_items(metrics_url: str, project: str) -> dict[str, float]:
    """The recommend service's item-cache sizes by view, from its metrics endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("recstack_recommend_item_cache_items{") and project in line:
            labels, value = line.rsplit(" ", 1)
            view = labels.split('view="', 1)[1].split('"', 1)[0]
            # With several workers, one line per worker (pid label): the least-filled counts.
            found[view] = min(float(value), found.get(view, float("inf")))
    return found
