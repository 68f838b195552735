"""make evaluate's pure parts: metrics by hand, the split, the baselines on tiny matrices, the
recall-alone scenes and the served client's handling of degraded answers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import yaml
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.recommend.v1 import scene_pb2

from bench.evaluate import baselines, served
from bench.evaluate.metrics import evaluate, ndcg_at_k, recall_at_k
from bench.evaluate.split import items_by_user, temporal_split
from cli import definitions
from infra.local import movielens

T0 = datetime(1997, 9, 20, tzinfo=UTC)


def ratings(rows):
    """(user, item, day) rows as a ratings table with an extra column kept by the split."""
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "item_id": pa.array([r[1] for r in rows], pa.int64()),
            "rating": pa.array([4] * len(rows), pa.int64()),
            "event_ts": pa.array(
                [T0 + timedelta(days=r[2]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
            "genres": pa.array([["Drama"]] * len(rows), pa.list_(pa.string())),
        }
    )


# --- metrics -------------------------------------------------------------------------------


def test_ndcg_and_recall_of_a_known_list():
    # Hits at positions 2 and 4 of 3 relevant items.
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k([5, 1, 7, 2], {1, 2, 9}) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([5, 1, 7, 2], {1, 2, 9}) == pytest.approx(0.498190, abs=1e-6)
    assert recall_at_k([5, 1, 7, 2], {1, 2, 9}) == pytest.approx(2 / 3)


def test_metrics_cut_at_k_and_ideal_is_capped_at_k():
    assert ndcg_at_k([5, 1], {1}, k=1) == 0.0
    assert recall_at_k([5, 1], {1}, k=1) == 0.0
    # Two relevant items, k = 1: a hit at the top is a perfect list of one.
    assert ndcg_at_k([1, 5], {1, 2}, k=1) == 1.0
    assert recall_at_k([1, 5], {1, 2}, k=1) == 0.5
    assert ndcg_at_k([2, 1, 3], {1, 2}) == pytest.approx(1.0)


def test_a_repeated_item_counts_once_at_its_first_position():
    assert ndcg_at_k([1, 1, 2], {1, 2}) == pytest.approx(1.0)
    assert recall_at_k([1, 1, 1], {1, 2}, k=2) == 0.5


def test_evaluate_averages_over_users_with_relevant_items_and_missing_lists_score_zero():
    quality = evaluate({1: [10, 11], 3: [30]}, {1: {10}, 2: {20}, 3: {31}, 4: set()})
    assert quality.users == 3
    assert quality.recall == pytest.approx(1 / 3)
    assert quality.ndcg == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no relevant"):
        ndcg_at_k([1], set())


# --- split ---------------------------------------------------------------------------------


def test_split_holds_out_each_users_last_fifth_by_time_and_keeps_every_column():
    days = [9, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    rows = [(1, item, day) for item, day in zip(range(1, 11), days, strict=True)]
    rows += [(2, 100 + i, 20 - i) for i in range(5)]
    split = temporal_split(ratings(rows))
    assert items_by_user(split.test) == {1: {1, 9}, 2: {100}}
    assert split.train.num_rows == 12 and split.test.num_rows == 3
    assert split.train.column_names == split.test.column_names == ratings(rows).column_names


def test_items_by_user_is_the_distinct_items():
    assert items_by_user(ratings([(1, 5, 0), (1, 5, 1), (2, 6, 0)])) == {1: {5}, 2: {6}}


# --- baselines -----------------------------------------------------------------------------


def matrix(rows, shape):
    data = np.ones(len(rows))
    return sp.csr_matrix((data, tuple(np.array(rows).T)), shape=shape)


# Users 0: {0, 1}, 1: {0, 1, 2}, 2: {1, 2}; raters per item 2, 3, 2; co-ratings (0,1) 2,
# (0,2) 1, (1,2) 2.
TINY = matrix([(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)], (3, 3))


def test_itemknn_is_the_cosine_of_the_items_raters():
    weights = baselines.itemknn_weights(TINY)
    expected = np.array(
        [
            [0, 2 / math.sqrt(6), 1 / 2],
            [2 / math.sqrt(6), 0, 2 / math.sqrt(6)],
            [1 / 2, 2 / math.sqrt(6), 0],
        ]
    )
    np.testing.assert_allclose(weights, expected)
    # User 0's score for item 2: cos(0, 2) + cos(1, 2).
    assert (TINY @ weights)[0, 2] == pytest.approx(0.5 + 2 / math.sqrt(6))


def test_itemknn_neighbours_keep_each_candidates_most_similar_items():
    weights = baselines.itemknn_weights(TINY, neighbours=1)
    # Candidate 0's nearest is item 1; candidate 1's are items 0 and 2 tied (one kept);
    # candidate 2's is item 1.
    assert weights[1, 0] == pytest.approx(2 / math.sqrt(6)) and weights[2, 0] == 0
    assert weights[1, 2] == pytest.approx(2 / math.sqrt(6)) and weights[0, 2] == 0
    assert np.count_nonzero(weights[:, 1]) == 1


def test_ease_of_two_items_is_the_ridge_weight_of_one_on_the_other():
    # Users {0, 1}, {0}, {1}: each column has 2 ones, they share 1; B01 = 1 / (2 + lambda).
    two = matrix([(0, 0), (0, 1), (1, 0), (2, 1)], (3, 2))
    np.testing.assert_allclose(baselines.ease_weights(two, 1.0), [[0, 1 / 3], [1 / 3, 0]])


def test_ease_equals_a_ridge_regression_of_each_item_on_the_others():
    rng = np.random.default_rng(3)
    dense = (rng.random((30, 6)) < 0.4).astype(np.float64)
    weights = baselines.ease_weights(sp.csr_matrix(dense), 5.0)
    for j in range(6):
        others = [i for i in range(6) if i != j]
        x = dense[:, others]
        ridge = np.linalg.solve(x.T @ x + 5.0 * np.eye(5), x.T @ dense[:, j])
        np.testing.assert_allclose(weights[others, j], ridge, atol=1e-10)
        assert weights[j, j] == 0
    with pytest.raises(ValueError, match="positive"):
        baselines.ease_weights(sp.csr_matrix(dense), 0.0)


def test_interactions_are_binary_and_recommend_leaves_out_the_users_items():
    table = ratings([(7, 10, 0), (7, 10, 1), (7, 20, 2), (8, 20, 0), (8, 30, 1)])
    interactions = baselines.Interactions.of(table)
    assert interactions.matrix.toarray().tolist() == [[1, 1, 0], [0, 1, 1]]
    # Every unseen item scores the same: ties by item id.
    lists = interactions.recommend(np.ones((3, 3)), k=2)
    assert lists == {7: [30], 8: [10]}


def test_tuning_picks_the_best_validation_setting_and_refits_on_all_of_training():
    # Users 1-5 rate items 1..10 in id order, user 6 items 11..20: each holds out its two
    # last (highest) ids.
    rows = [(u, i, i) for u in range(1, 6) for i in range(1, 11)]
    rows += [(6, i, i) for i in range(11, 21)]
    seen = []

    def fit(m, setting):
        seen.append((setting, m.nnz))
        # Setting 1 scores items by id, setting 2 by reversed id: the lowest unseen ids are
        # users 1-5's held-out items, the highest user 6's.
        order = np.arange(m.shape[1], dtype=np.float64)
        return np.tile(order if setting == 1 else -order, (m.shape[1], 1))

    tuned = baselines.tune_and_fit(ratings(rows), (1, 2), fit)
    assert tuned.setting == 2
    assert tuned.validation_ndcg[2] > tuned.validation_ndcg[1]
    # Both settings fitted on the validation slice's 8 ratings per user, the best on all 10.
    assert seen == [(1, 48), (2, 48), (2, 60)]
    # Refitted on everything, users 1-5 get the items they never rated, lowest id first.
    assert tuned.lists[1][:3] == [11, 12, 13]


# --- served systems ------------------------------------------------------------------------


def home_feed_documents():
    return list(
        yaml.safe_load_all((movielens.FEATURE_REPO / "scenes" / "home_feed.yaml").read_text())
    )


def load_scenes(tmp_path, documents):
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump_all(documents))
    return {item.resource_id: item.spec for item in definitions.load(tmp_path, "p").served}


def test_each_recall_alone_is_a_scene_of_that_recall_then_exclusions_and_top_n(tmp_path):
    documents = home_feed_documents()
    home = served.home_scene(documents)
    evaluated = served.scenes(documents, 500)
    loaded = load_scenes(tmp_path, evaluated.documents)
    for recall in home["recalls"]:
        scene = loaded[evaluated.systems[recall["type"]]]
        assert isinstance(scene, scene_pb2.Scene)
        [only] = scene.recalls
        assert (only.type, only.quota) == (recall["type"], 500)
        assert dict(only.params) == recall["params"]
        assert [f.type for f in scene.filters] == ["exclude_items"]
        assert not scene.rank.model and scene.top_n == 20
    [popular] = loaded[evaluated.systems["popular_365d"]].recalls
    assert popular.type == "popular" and popular.params["feature"] == "item_ratings_365d"


def test_the_home_feed_is_served_as_declared_and_each_experiment_variant_as_its_own_scene(
    tmp_path,
):
    documents = home_feed_documents()
    evaluated = served.scenes(documents, 500)
    assert list(evaluated.systems)[:2] == ["pipeline", "pipeline_conversion"]
    assert evaluated.systems["pipeline"] == "movielens_home"
    # No experiment is applied: it would serve each user only one of the variants.
    assert all(document["kind"] == "Scene" for document in evaluated.documents)
    loaded = load_scenes(tmp_path, evaluated.documents)
    home, conversion = loaded["movielens_home"], loaded[evaluated.systems["pipeline_conversion"]]
    assert home.rank.score_formula == "probs_ctr"
    assert conversion.rank.score_formula == "probs_ctr * probs_cvr"
    conversion.rank.score_formula = home.rank.score_formula
    conversion.description = home.description
    assert conversion == home


class FakeStub:
    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def Recommend(self, request, timeout):
        self.requests.append(request)
        return self.answers.pop(0)


def answer(*items, degraded=False):
    return pb.RecommendResponse(
        items=[pb.RecommendedItem(item_id=str(i)) for i in items],
        degraded=degraded,
        variants=["exp/control"],
    )


def test_serve_excludes_the_training_items_and_retries_a_degraded_answer(monkeypatch):
    monkeypatch.setattr(served, "DEGRADED_PAUSE_S", 0)
    stub = FakeStub([answer(3, 4, degraded=True), answer(4, 3), answer()])
    got = served.Recommender(stub).serve("s", {1: {9, 10}, 2: set()})
    assert got.lists == {1: [4, 3], 2: []}
    assert got.retried_degraded == 1 and got.empty == 1
    # Both users' answers listed an experiment variant: counted, as none should route them.
    assert got.routed == 2
    first = stub.requests[0]
    assert (first.scene, first.user_id, first.size) == ("s", "1", 20)
    assert list(first.context[served.EXCLUDE_KEY].string_list_value.values) == ["9", "10"]


def test_serve_refuses_to_score_an_answer_that_stays_degraded(monkeypatch):
    monkeypatch.setattr(served, "DEGRADED_PAUSE_S", 0)
    stub = FakeStub([answer(1, degraded=True)] * 4)
    with pytest.raises(RuntimeError, match="still degraded"):
        served.Recommender(stub).serve("s", {1: set()})
