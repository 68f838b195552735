"""Two classical baselines on the same split, in numpy/scipy: ItemKNN and EASE.

Both read only the binary user x item matrix of the training ratings (an item rated once or
several times is 1), score every item for every user, and recommend the best k the user has
not rated in training.

- ItemKNN (Deshpande & Karypis, 2004): the cosine of two items' sets of raters, each
  candidate keeping its `neighbours` most similar items; a user's score for item j is the sum
  of the similarities of j to the items they rated.
- EASE (Steck, 2019): the item x item weights B minimising ||X - X B||² + λ||B||² with
  diag(B) = 0, in closed form: P = (XᵀX + λI)⁻¹, B = -P / diag(P) (column-wise), diag(B) = 0.
  λ is picked from a grid on a validation slice carved from training (each user's last 20% of
  training ratings, `split.temporal_split` again), then the weights are refitted on all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bench.evaluate import metrics
from bench.evaluate.split import items_by_user, temporal_split

EASE_LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
KNN_NEIGHBOURS = (20, 50, 100, 200, 0)  # 0: every item


@dataclass(frozen=True)
class Interactions:
    """The binary user x item matrix of some ratings over fixed user and item universes."""

    users: np.ndarray
    items: np.ndarray
    matrix: sp.csr_matrix

    @classmethod
    def of(
        cls, ratings: pa.Table, users: np.ndarray | None = None, items: np.ndarray | None = None
    ) -> Interactions:
        user_ids = ratings.column("user_id").to_numpy().astype(np.int64)
        item_ids = ratings.column("item_id").to_numpy().astype(np.int64)
        users = np.unique(user_ids) if users is None else users
        items = np.unique(item_ids) if items is None else items
        known = np.isin(user_ids, users) & np.isin(item_ids, items)
        rows = np.searchsorted(users, user_ids[known])
        columns = np.searchsorted(items, item_ids[known])
        matrix = sp.csr_matrix(
            (np.ones(len(rows)), (rows, columns)), shape=(len(users), len(items))
        )
        matrix.data[:] = 1.0  # duplicates were summed
        return cls(users, items, matrix)

    def recommend(self, weights: np.ndarray, k: int = metrics.K) -> dict[int, list[int]]:
        """Each user's k best items by X·weights, their own items left out; ties by item id."""
        scores = np.asarray(self.matrix @ weights)
        scores[self.matrix.nonzero()] = -np.inf
        lists = {}
        for row, user in enumerate(self.users):
            best = np.lexsort((self.items, -scores[row]))[:k]
            lists[int(user)] = [int(self.items[i]) for i in best if np.isfinite(scores[row, i])]
        return lists


def itemknn_weights(matrix: sp.csr_matrix, neighbours: int = 0) -> np.ndarray:
    """Cosine between item columns, zero diagonal; with `neighbours` > 0 each column j keeps
    only its `neighbours` largest entries (the items most similar to candidate j)."""
    co = np.asarray((matrix.T @ matrix).todense(), dtype=np.float64)
    norms = np.sqrt(np.diag(co))
    norms[norms == 0] = 1.0
    similarity = co / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    if 0 < neighbours < similarity.shape[0]:
        cut = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
        np.put_along_axis(similarity, cut, 0.0, axis=0)
    return similarity


def ease_weights(matrix: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019, Algorithm 1)."""
    if lam <= 0:
        raise ValueError(f"lambda must be positive, not {lam}")
    gram = np.asarray((matrix.T @ matrix).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


@dataclass(frozen=True)
class Tuned:
    """The setting picked on the validation slice, with every setting's validation NDCG."""

    setting: float
    validation_ndcg: Mapping[float, float]
    lists: dict[int, list[int]]


def tune_and_fit(
    train: pa.Table, grid: Sequence[float], fit: Callable[[sp.csr_matrix, float], np.ndarray]
) -> Tuned:
    """`fit` at each setting of `grid` on the validation slice's fit part, judged by NDCG@k on
    its held-out part; the best setting (the smallest on a tie) refitted on all of `train`."""
    full = Interactions.of(train)
    slice_ = temporal_split(train)
    fitting = Interactions.of(slice_.train, full.users, full.items)
    held_out = items_by_user(slice_.test)
    scores = {
        setting: metrics.evaluate(fitting.recommend(fit(fitting.matrix, setting)), held_out).ndcg
        for setting in grid
    }
    best = max(grid, key=lambda setting: (scores[setting], -setting))
    return Tuned(best, scores, full.recommend(fit(full.matrix, best)))


def ease(train: pa.Table, grid: Sequence[float] = EASE_LAMBDAS) -> Tuned:
    return tune_and_fit(train, grid, ease_weights)


def itemknn(train: pa.Table, grid: Sequence[int] = KNN_NEIGHBOURS) -> Tuned:
    return tune_and_fit(train, grid, lambda m, n: itemknn_weights(m, int(n)))
