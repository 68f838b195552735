"""Labelled samples: negatives the user had not rated by then, a per-user temporal split."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.samples import (
    SAMPLE_SCHEMA,
    SampleConfig,
    build_samples,
    main,
    split_by_user_time,
)

T0 = datetime(1997, 9, 20, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def random_ratings(seed, users=8, items=40, instants=12):
    """Each user rates a random subset of items on a coarse time grid (many ties)."""
    rng = random.Random(seed)
    rows = []
    for user in range(1, users + 1):
        for item in rng.sample(range(100, 100 + items), rng.randint(5, items // 2)):
            moment = T0 + timedelta(hours=rng.randrange(instants))
            rows.append((user * 7, item, rng.randint(1, 5), moment))
    rng.shuffle(rows)
    return table(rows)


def table(rows):
    users, items, ratings, times = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "rating": pa.array(ratings, pa.int64()),
            "event_ts": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def rated_at(ratings):
    """user -> item -> the time of its first rating."""
    first = defaultdict(dict)
    for row in ratings.to_pylist():
        seen = first[row["user_id"]]
        seen[row["item_id"]] = min(seen.get(row["item_id"], row["event_ts"]), row["event_ts"])
    return first


def groups(rows):
    """(positive row, [negative rows]) in output order: each positive leads its negatives."""
    out = []
    for row in rows.to_pylist():
        if row["clicked"]:
            out.append((row, []))
        else:
            out[-1][1].append(row)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_no_negative_was_rated_by_the_user_at_or_before_its_time(seed):
    ratings = random_ratings(seed)
    samples = build_samples(ratings, SampleConfig(negatives=4, seed=seed))
    first = rated_at(ratings)
    catalogue = set(ratings.column("item_id").to_pylist())
    for rows in (samples.train, samples.test):
        for positive, negatives in groups(rows):
            event_time = positive["event_ts"] + MICROSECOND
            assert len(negatives) == 4
            assert len({row["item_id"] for row in negatives}) == 4
            for row in negatives:
                assert row["item_id"] in catalogue
                assert row["user_id"] == positive["user_id"]
                assert row["event_ts"] == positive["event_ts"]
                rated = first[row["user_id"]].get(row["item_id"])
                assert rated is None or rated > event_time


def test_items_rated_later_may_be_negatives_earlier():
    # User 1 rates item 2 an hour after item 1: at item 1's time, item 2 is still unrated.
    ratings = table([(1, 1, 5, T0), (1, 2, 3, T0 + timedelta(hours=1))])
    seen = set()
    for seed in range(20):
        config = SampleConfig(negatives=3, test_fraction=0.0, seed=seed)
        samples = build_samples(ratings, config, catalogue=[1, 2, 3, 4, 5])
        (first, first_negatives), (_, later_negatives) = groups(samples.train)
        assert first["item_id"] == 1
        assert sorted(row["item_id"] for row in later_negatives) == [3, 4, 5]
        seen |= {row["item_id"] for row in first_negatives}
    assert seen == {2, 3, 4, 5}


@pytest.mark.parametrize("seed", range(5))
def test_each_users_last_fifth_of_ratings_by_time_is_the_test_period(seed):
    ratings = random_ratings(seed)
    samples = build_samples(ratings, SampleConfig(seed=seed))
    by_user = defaultdict(list)
    for row in ratings.to_pylist():
        by_user[row["user_id"]].append((row["event_ts"], row["item_id"]))
    split = {"train": defaultdict(list), "test": defaultdict(list)}
    for name, rows in (("train", samples.train), ("test", samples.test)):
        for positive, _ in groups(rows):
            moment = positive["event_ts"] + MICROSECOND
            split[name][positive["user_id"]].append((moment, positive["item_id"]))
    for user, events in by_user.items():
        ordered = sorted(events)
        test_count = int(len(ordered) * 0.2 + 0.5)
        assert sorted(split["test"][user]) == ordered[len(ordered) - test_count :]
        assert sorted(split["train"][user]) == ordered[: len(ordered) - test_count]
        # Training never reaches into the user's test period.
        assert max(split["train"][user]) <= min(split["test"][user])


def test_ties_at_the_split_boundary_go_by_item_id():
    # Five ratings at one instant: the last fifth by (time, item id) is item 5.
    ratings = table([(1, item, 4, T0) for item in (3, 5, 1, 4, 2)])
    samples = build_samples(ratings, SampleConfig(negatives=0))
    assert samples.test.column("item_id").to_pylist() == [5]
    assert samples.train.column("item_id").to_pylist() == [1, 2, 3, 4]


def test_split_by_user_time_rounds_half_up():
    users = np.repeat(np.array([1, 2, 3], np.int64), [2, 7, 8])
    times = np.arange(len(users), dtype=np.int64)[::-1].copy()
    test = split_by_user_time(users, times, np.zeros_like(users), 0.25)
    # 2 x 0.25 = 0.5 -> 1; 7 x 0.25 = 1.75 -> 2; 8 x 0.25 = 2.
    assert [int(test[users == user].sum()) for user in (1, 2, 3)] == [1, 2, 2]
    # Times run backwards here: each user's test ratings are their earliest rows.
    assert test[users == 2].tolist() == [True, True, False, False, False, False, False]


def test_labels_counts_and_join_timestamps():
    ratings = random_ratings(11)
    samples = build_samples(ratings, SampleConfig(negatives=3, conversion_rating=4))
    rows = pa.concat_tables([samples.train, samples.test])
    assert samples.train.schema == samples.test.schema == SAMPLE_SCHEMA
    assert rows.num_rows == ratings.num_rows * 4
    assert sum(rows.column("clicked").to_pylist()) == ratings.num_rows
    events = {
        (r["user_id"], r["item_id"], r["event_ts"] - MICROSECOND): r["rating"]
        for r in ratings.to_pylist()
    }
    for row in rows.to_pylist():
        if row["clicked"]:
            rating = events[(row["user_id"], row["item_id"], row["event_ts"])]
            assert row["rating"] == rating
            assert row["converted"] == int(rating >= 4)
        else:
            assert (row["converted"], row["rating"]) == (0, None)
    for part in (samples.train, samples.test):
        times = part.column("event_ts").to_pylist()
        assert times == sorted(times)


def test_the_same_seed_gives_the_same_rows_whatever_the_input_order():
    ratings = random_ratings(3)
    first = build_samples(ratings, SampleConfig(seed=9))
    shuffled = ratings.take(np.random.default_rng(0).permutation(ratings.num_rows))
    again = build_samples(shuffled, SampleConfig(seed=9))
    assert first.train.equals(again.train) and first.test.equals(again.test)
    other = build_samples(ratings, SampleConfig(seed=10))
    assert not other.train.equals(first.train)
    positives = [row for row in other.train.to_pylist() if row["clicked"]]
    assert positives == [row for row in first.train.to_pylist() if row["clicked"]]


def test_a_catalogue_too_small_for_the_negatives_is_refused():
    ratings = table([(1, 1, 5, T0), (1, 2, 5, T0), (1, 3, 5, T0 + timedelta(hours=1))])
    with pytest.raises(ValueError, match=r"user 1 has 1 unrated catalogue items"):
        build_samples(ratings, SampleConfig(negatives=2), catalogue=[1, 2, 3])
    with pytest.raises(ValueError, match="not in the catalogue"):
        build_samples(ratings, catalogue=[1, 2])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"negatives": -1}, "negatives"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        SampleConfig(**config)


def test_ratings_with_nulls_or_missing_columns_are_refused():
    ratings = random_ratings(0)
    with pytest.raises(ValueError, match="lack columns"):
        build_samples(ratings.drop_columns(["rating"]))
    nulled = ratings.set_column(2, "rating", pa.array([None] * ratings.num_rows, pa.int64()))
    with pytest.raises(ValueError, match="'rating' has nulls"):
        build_samples(nulled)


def test_the_command_writes_train_and_test_parquet(tmp_path, capsys):
    ratings = random_ratings(4)
    pq.write_table(ratings, tmp_path / "ratings.parquet")
    code = main([str(tmp_path / "ratings.parquet"), str(tmp_path / "out"), "--negatives", "2"])
    assert code == 0
    expected = build_samples(ratings, SampleConfig(negatives=2))
    assert pq.read_table(tmp_path / "out" / "train.parquet").equals(expected.train)
    assert pq.read_table(tmp_path / "out" / "test.parquet").equals(expected.test)
    assert "train.parquet" in capsys.readouterr().out
