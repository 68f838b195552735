"""MovieLens-100k on the running stack: its features materialized, its ranker trained.

    python -m infra.local.movielens prepare   # apply the feature repo, backfill every view
    python -m infra.local.movielens train     # prepare, then `recstack train` (`make train`)

The feature repository declares the home-feed scene and its experiment beside the features
(`feature_repo/scenes/`), so applying it needs the recommend service too. Scene ids are
global to that service: a test or benchmark applying the repository in a project of its own
applies `copy_feature_repo`'s copy, which leaves the scenes out, and builds its scene from
`home_scene`.

`item_embeddings` is published from the file training writes, so it is materialized after a
training run (again after each: a retrain rewrites the file), and by `prepare` once the file
exists.

Everything goes through the `recstack` CLI and the services' public APIs; reruns are cheap:
the backfill only fills intervals that are not materialized yet.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from recstack.recommend.v1 import scene_pb2

from cli import definitions
from cli import main as recstack
from infra.local.tritonserver import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "movielens"
FEATURE_REPO = EXAMPLE / "feature_repo"
SCENES = "scenes"
HOME_SCENE = "movielens_home"
PROJECT = "movielens"
MODEL = "ranker"
VIEWS = ("movie_attributes", "user_profile", "item_popularity", "user_history", "item_similar")
EMBEDDINGS_VIEW = "item_embeddings"
# The ratings span 1997-09-20..1998-04-22.
WINDOW = ("1997-09-20", "1998-04-23")


class StepFailed(RuntimeError):
    pass


def run(*args: str) -> None:
    code = recstack(list(args))
    if code != 0:
        raise StepFailed(f"`recstack {' '.join(args)}` exited {code}")


def prepare(project: str = PROJECT, connection: Sequence[str] = ()) -> None:
    missing = [p for p in ("ratings", "movies", "users") if not data(p).is_file()]
    if missing:
        raise StepFailed(
            f"{', '.join(map(str, map(data, missing)))} missing: run `make movielens-data`"
        )
    run("apply", str(FEATURE_REPO), "--project", project, *connection)
    started = time.perf_counter()
    for view in VIEWS:
        backfill(project, view, connection)
    print(f"{project}: {len(VIEWS)} views materialized in {time.perf_counter() - started:.1f}s")
    if data(EMBEDDINGS_VIEW).is_file():
        backfill(project, EMBEDDINGS_VIEW, connection)


def backfill(
    project: str,
    view: str,
    connection: Sequence[str] = (),
    statuses: Sequence[str] = ("none", "incomplete"),
) -> None:
    run(
        "materialize",
        "backfill",
        f"{project}/{view}",
        "--start",
        WINDOW[0],
        "--end",
        WINDOW[1],
        "--status",
        *statuses,
        "--wait",
        *connection,
    )


def train(project: str = PROJECT, connection: Sequence[str] = ()) -> None:
    started = time.perf_counter()
    run("train", str(EXAMPLE / "train.yaml"), "--project", project, *connection)
    print(f"{project}/{MODEL}: trained and deployed in {time.perf_counter() - started:.1f}s")
    # The new model's item embeddings replace the previous ones.
    backfill(project, EMBEDDINGS_VIEW, connection, ("none", "incomplete", "complete"))


def copy_feature_repo(target: Path, *, scenes: bool = False) -> Path:
    """The feature repository's registry definitions, without its scenes unless `scenes`
    (for a recommend service of the caller's own), copied to `target` (its FILE sources'
    `../data` paths then resolve beside `target`)."""
    ignore = None if scenes else shutil.ignore_patterns(SCENES)
    shutil.copytree(FEATURE_REPO, target, ignore=ignore)
    return target


def home_scene(project: str) -> scene_pb2.Scene:
    """The home-feed scene as the repository declares it, in `project`."""
    repo = definitions.load(FEATURE_REPO / SCENES, project)
    [scene] = [item.spec for item in repo.served if item.resource_id == HOME_SCENE]
    assert isinstance(scene, scene_pb2.Scene)
    scene.project = project
    return scene


def data(name: str) -> Path:
    return EXAMPLE / "data" / f"{name}.parquet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.movielens")
    parser.add_argument("step", choices=("prepare", "train"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        prepare()
        if args.step == "train":
            train()
    except StepFailed as exc:
        print(f"error: {exc}")
        return 1
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
