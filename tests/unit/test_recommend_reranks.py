"""The rerank stages: boost, category_diversity, mmr and stock, on an in-memory item table."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from recstack.recommend.v1 import scene_pb2

from services.recommend.item_cache import ItemTable
from services.recommend.pipeline import (
    SCORE,
    BuildContext,
    Candidates,
    StageDeps,
    StageRequest,
    StageSettings,
)
from services.recommend.stages import default_stage_registry
from shared.errors import InvalidArgument
from shared.feature_views import Feature, ViewSchema
from shared.online_store import ViewColumns
from shared.values import VT

NOW = datetime(2026, 12, 1, tzinfo=UTC)
IDS = [str(i) for i in range(1, 9)]
VIEW = ViewSchema(
    "p",
    "items",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (
        Feature("genre", VT.VALUE_TYPE_STRING),
        Feature("year", VT.VALUE_TYPE_INT64),
        Feature("stock", VT.VALUE_TYPE_INT64),
        Feature("vector", VT.VALUE_TYPE_FLOAT_LIST),
    ),
)
TABLE = ItemTable.from_scan(
    VIEW,
    list(range(1, 9)),
    ViewColumns(
        {
            # Items 1-4 are dramas, then two comedies and two westerns.
            "genre": ["drama"] * 4 + ["comedy"] * 2 + ["western"] * 2,
            "year": [1990, 1999, 1990, 1999, 1990, 1999, 1990, 1999],
            "stock": [5, 0, 5, None, 5, 5, 1, 5],
            # 1 and 2 point the same way, 3 elsewhere; the rest have no vector.
            "vector": [[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], None, None, None, None, None],
        },
        [NOW] * 8,
    ),
    NOW,
)


class Items:
    """The item cache's interface over one in-memory table."""

    def lookup(self, project, view_id, item_ids):
        table = self.table(project, view_id)
        return table, table.rows(item_ids)

    def values(self, project, view_id, feature, item_ids):
        table, rows = self.lookup(project, view_id, item_ids)
        return table.column(feature, rows)

    def table(self, project, view_id):
        return TABLE


def stage(kind_name: str, **params):
    settings = StageSettings(kind_name, kind_name, params=params)
    context = BuildContext("s", scene_pb2.Scene(project="p"), StageDeps(Items(), None, None, None))
    return default_stage_registry().get("rerank", kind_name).factory(settings, context)


def ranked() -> Candidates:
    # Scores fall with the id: the model likes item 1 best.
    return Candidates.of(IDS, **{SCORE: np.linspace(0.9, 0.2, 8)})


def request(size: int = 8, **context) -> StageRequest:
    return StageRequest("s", "p", "7", context, size)


def test_boost_multiplies_matching_scores_and_resorts():
    boosted = stage(
        "boost", rules=[{"field": "items:year", "op": ">=", "value": 1999}], factor=2.0
    ).rerank(request(), ranked())

    # 1999 items doubled: 1.6, 1.2, 0.8, 0.4; the others keep 0.9, 0.7, 0.5, 0.3.
    assert boosted.item_ids.tolist() == ["2", "4", "1", "6", "3", "5", "8", "7"]
    assert boosted.columns[SCORE][0] == pytest.approx(0.8 * 2)


def test_a_factor_below_one_demotes():
    demoted = stage(
        "boost", rules=[{"field": "items:genre", "op": "==", "value": "drama"}], factor=0.1
    ).rerank(request(), ranked())

    assert demoted.item_ids.tolist() == ["5", "6", "7", "8", "1", "2", "3", "4"]


def test_category_diversity_caps_a_category_in_every_window():
    diverse = stage("category_diversity", feature="items:genre", window=3, max_per_window=1)

    order = diverse.rerank(request(), ranked()).item_ids.tolist()

    genres = [TABLE.columns["genre"][int(i) - 1] for i in order]
    assert order[:3] == ["1", "5", "7"]
    # Until the other genres run out, no window of 3 holds a genre twice.
    assert all(len(set(genres[i : i + 3])) == 3 for i in range(4))
    assert sorted(order) == IDS


def test_category_diversity_relaxes_when_a_category_is_all_that_is_left():
    diverse = stage("category_diversity", feature="items:genre", window=3, max_per_window=1)

    order = diverse.rerank(request(), ranked()).item_ids.tolist()

    assert order == ["1", "5", "7", "2", "6", "8", "3", "4"]  # 3, 4: only dramas were left


def test_mmr_with_lambda_one_keeps_the_score_order():
    assert (
        stage("mmr", feature="items:vector", **{"lambda": 1.0})
        .rerank(request(), ranked())
        .item_ids.tolist()
        == IDS
    )


def test_mmr_pushes_a_near_duplicate_down():
    order = (
        stage("mmr", feature="items:vector", **{"lambda": 0.5})
        .rerank(request(), ranked())
        .item_ids.tolist()
    )

    # Item 2 is almost item 1: after 1, the dissimilar items come first.
    assert order[0] == "1"
    assert order.index("2") > order.index("3")


def test_stock_moves_scarce_and_unknown_items_behind_the_others():
    order = (
        stage("stock", feature="items:stock", min_stock=2)
        .rerank(request(), ranked())
        .item_ids.tolist()
    )

    assert order == ["1", "3", "5", "6", "8", "2", "4", "7"]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("boost", {"rules": [], "factor": 2}, "reranks[0].params.rules"),
        (
            "boost",
            {"rules": [{"field": "items:year", "op": "==", "value": 1}], "factor": -1},
            "reranks[0].params.factor",
        ),
        ("category_diversity", {"feature": "genre"}, "reranks[0].params.feature"),
        (
            "category_diversity",
            {"feature": "items:genre", "window": 3, "max_per_window": 3},
            "reranks[0].params.max_per_window",
        ),
        ("mmr", {"feature": "items:vector", "lambda": 2}, "reranks[0].params.lambda"),
        ("stock", {"feature": "items:stock", "missing": "drop"}, "reranks[0].params.missing"),
        ("stock", {"feature": "items:stock", "limit": 1}, "reranks[0].params"),
    ],
)
def test_bad_params_are_refused_naming_the_key(name, params, field):
    check = default_stage_registry().get("rerank", name).check

    with pytest.raises(InvalidArgument) as error:
        check(StageSettings(name, name, params=params), "reranks[0]")

    assert error.value.field == field
