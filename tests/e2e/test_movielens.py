"""MovieLens-100k through the platform: `recstack apply`, materialization, ExportTrainingSet.

A deterministic subset of 50 users (every 19th) and all their ratings go through the example
feature repository (`examples/movielens/feature_repo`, applied with the CLI in a project of
its own), every view is backfilled over the data's whole time range, and the labelled samples
of `training.samples` are exported point in time through the materialization service. The
feature values of the exported rows and of the online store are then checked against values
computed directly from the ratings. (`make movielens-data` writes the Parquet files.)
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recstack.common.v1 import value_pb2
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.materialization.v1 import materialization_service_pb2_grpc
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from infra.local import movielens
from tests.cli import run_cli
from training.samples import SampleConfig, build_samples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "movielens"
VIEWS = ("movie_attributes", "user_profile", "item_popularity", "user_history")
START, END = "1997-09-20", "1998-04-23"
USER_STEP = 19
RECENT = 50
CHECKED_ROWS = 400


@dataclass(frozen=True)
class Rating:
    user_id: int
    item_id: int
    rating: int
    event_ts: datetime
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    project: str
    ratings: list[Rating]
    movies: dict[int, dict]
    users: dict[int, dict]
    train: pa.Table
    exported: pa.Table


def chosen(table: pa.Table) -> pa.Table:
    """Users 1, 20, 39, …: every USER_STEP-th user id."""
    if "user_id" not in table.column_names:
        return table
    ids = table.column("user_id").to_numpy()
    return table.filter(pa.array((ids - 1) % USER_STEP == 0))


@pytest.fixture(scope="module")
def run(
    tmp_path_factory, registry_address, materialization_address, connect, cli_environment
) -> Run:
    base = tmp_path_factory.mktemp("movielens")
    movielens.copy_feature_repo(base / "feature_repo")
    (base / "data").mkdir()
    tables = {}
    for name in ("ratings", "movies", "users"):
        path = EXAMPLE / "data" / f"{name}.parquet"
        assert path.is_file(), f"{path} is missing: run `make movielens-data`"
        tables[name] = chosen(pq.read_table(path))
        pq.write_table(tables[name], base / "data" / f"{name}.parquet")
    assert tables["users"].num_rows == 50

    project = f"movielens_{uuid.uuid4().hex[:8]}"
    applied = run_cli(
        "apply", str(base / "feature_repo"), "--project", project, "--registry", registry_address
    )
    assert applied.code == 0, applied.err
    mat = ("--materialization", materialization_address)
    jobs = []
    for view in VIEWS:
        started = run_cli(
            "materialize",
            "backfill",
            f"{project}/{view}",
            "--start",
            START,
            "--end",
            END,
            *mat,
            "-o",
            "json",
        )
        assert started.code == 0, started.err
        [job] = started.json()["jobs"]
        jobs.append(f"{project}/{view}/{job['name'].rsplit('/', 1)[-1]}")
    for job in jobs:
        watched = run_cli("materialize", "watch", job, *mat)
        assert watched.code == 0, watched.out + watched.err

    samples = build_samples(tables["ratings"], SampleConfig(negatives=4, seed=1))
    pq.write_table(samples.train, base / "train.parquet")
    with connect(materialization_address) as channel:
        exported = materialization_service_pb2_grpc.MaterializationServiceStub(
            channel
        ).ExportTrainingSet(
            mpb.ExportTrainingSetRequest(
                model_feature_set=f"projects/{project}/modelFeatureSets/ranking",
                entity_parquet_path=str(base / "train.parquet"),
                output_path=str(base / "train_features.parquet"),
            ),
            timeout=120,
        )
    assert exported.row_count == samples.train.num_rows
    ratings = [
        Rating(r["user_id"], r["item_id"], r["rating"], r["event_ts"], tuple(r["genres"]))
        for r in tables["ratings"].to_pylist()
    ]
    return Run(
        project,
        ratings,
        {row["item_id"]: row for row in tables["movies"].to_pylist()},
        {row["user_id"]: row for row in tables["users"].to_pylist()},
        samples.train,
        pq.read_table(base / "train_features.parquet"),
    )


def by(ratings: list[Rating], key: str) -> dict[int, list[Rating]]:
    grouped = defaultdict(list)
    for rating in ratings:
        grouped[getattr(rating, key)].append(rating)
    return grouped


def user_history(ratings: list[Rating]) -> dict | None:
    """The user_history features over these ratings (a user's, all strictly before a time)."""
    if not ratings:
        return None
    newest_first = sorted(ratings, key=lambda r: (r.event_ts, r.item_id), reverse=True)
    genres = Counter(genre for rating in ratings for genre in rating.genres)
    return {
        "user_history__genre_counts": sorted((g, float(n)) for g, n in genres.items()),
        "user_history__recent_items": [r.item_id for r in newest_first[:RECENT]],
        "user_history__user_ratings_365d": len(ratings),
        "user_history__user_mean_rating_365d": np.mean([r.rating for r in ratings]),
    }


def item_popularity(ratings: list[Rating]) -> dict | None:
    """The item_popularity features as of the newest of these ratings (an item's, strictly
    before a time): windows are anchored at that rating, the view's latest event."""
    if not ratings:
        return None
    latest = max(r.event_ts for r in ratings)
    return {
        "item_popularity__item_ratings_30d": sum(
            latest - timedelta(days=30) < r.event_ts for r in ratings
        ),
        "item_popularity__item_ratings_365d": len(ratings),
        "item_popularity__item_mean_rating_365d": np.mean([r.rating for r in ratings]),
    }


def features_of(row: dict, prefix: str) -> dict | None:
    values = {name: value for name, value in row.items() if name.startswith(prefix)}
    return None if all(value is None for value in values.values()) else values


def same(got: dict | None, want: dict | None) -> bool:
    if got is None or want is None:
        return got is want
    return got.keys() == want.keys() and all(
        np.isclose(got[k], want[k]) if isinstance(want[k], float) else got[k] == want[k]
        for k in want
    )


def test_the_export_keeps_every_sample_row_in_order(run):
    assert run.exported.num_rows == run.train.num_rows
    for column in run.train.column_names:
        assert run.exported.column(column).equals(run.train.column(column)), column


def test_no_positive_sees_its_own_rating(run):
    rows = run.exported.select(["item_id", "clicked", "user_history__recent_items"]).to_pylist()
    positives = [row for row in rows if row["clicked"]]
    assert len(positives) == run.train.num_rows // 5
    with_history = [row for row in positives if row["user_history__recent_items"] is not None]
    # Ratings are rated once per (user, item): history before a rating never holds its item.
    assert len(with_history) > 0.95 * len(positives)
    assert not any(row["item_id"] in row["user_history__recent_items"] for row in with_history)


def event_times(run: Run, rows: list[dict]) -> list[datetime]:
    """The time of the rating each row stands for: a positive's own, a negative's positive's
    (each positive precedes its negatives)."""
    rated = {(r.user_id, r.item_id): r.event_ts for r in run.ratings}
    times: list[datetime] = []
    for row in rows:
        times.append(rated[(row["user_id"], row["item_id"])] if row["clicked"] else times[-1])
    return times


def test_history_and_popularity_are_as_of_strictly_before_each_rating(run):
    per_user, per_item = by(run.ratings, "user_id"), by(run.ratings, "item_id")
    rows = run.exported.to_pylist()
    events = event_times(run, rows)
    picked = np.random.default_rng(5).choice(len(rows), CHECKED_ROWS, replace=False)
    empty_histories = 0
    for index in sorted(picked):
        row, event = rows[index], events[index]
        before_user = [r for r in per_user[row["user_id"]] if r.event_ts < event]
        before_item = [r for r in per_item[row["item_id"]] if r.event_ts < event]
        want_user = user_history(before_user)
        empty_histories += want_user is None
        assert same(features_of(row, "user_history__"), want_user), (index, row)
        assert same(features_of(row, "item_popularity__"), item_popularity(before_item)), row
        user, movie = run.users[row["user_id"]], run.movies[row["item_id"]]
        assert (row["user_profile__age"], row["user_profile__occupation"]) == (
            user["age"],
            user["occupation"],
        )
        assert row["movie_attributes__genres"] == movie["genres"]
        assert row["movie_attributes__release_year"] == movie["release_year"]
    # The first ratings of a user have no history; nearly every row has one.
    assert empty_histories < CHECKED_ROWS // 10


def test_the_online_store_holds_each_users_newest_history(run, serving_address, connect):
    per_user = by(run.ratings, "user_id")
    users = sorted(per_user)
    with connect(serving_address) as channel:
        response = serving_service_pb2_grpc.FeatureServingServiceStub(channel).GetOnlineFeatures(
            spb.GetOnlineFeaturesRequest(
                project=run.project,
                features=["user_history:*"],
                entity_keys=[value_pb2.Value(int64_value=user) for user in users],
            ),
            timeout=30,
        )
    columns = dict(zip(response.feature_names, response.columns, strict=True))
    for position, user in enumerate(users):
        want = user_history(per_user[user])
        counts = columns["user_history:genre_counts"].values[position]
        recent = columns["user_history:recent_items"].values[position]
        total = columns["user_history:user_ratings_365d"].values[position]
        assert (
            sorted(counts.string_double_map_value.values.items())
            == want["user_history__genre_counts"]
        )
        assert list(recent.int64_list_value.values) == want["user_history__recent_items"]
        assert total.int64_value == len(per_user[user])
        newest = max(r.event_ts for r in per_user[user])
        stamped = columns["user_history:recent_items"].event_times[position].ToDatetime(UTC)
        assert stamped == newest
