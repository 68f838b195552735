"""Top-k quality of recommendation lists: Recall@k and NDCG@k with binary relevance.

For one user with relevant set R (the items they rated in the test period) and a list L:
- Recall@k = |L[:k] ∩ R| / |R| (the denominator is all of R, as RecBole defines it; a user
  with more than k relevant items cannot reach 1);
- NDCG@k = DCG / IDCG, DCG = Σ_{i ≤ k, L[i] ∈ R} 1 / log2(i + 1) (positions from 1),
  IDCG = Σ_{i ≤ min(k, |R|)} 1 / log2(i + 1), the DCG of a perfect list.
A system is scored by the mean over every user with a relevant item; a user it gave no list
(or a short one) counts with what the list holds, so a system that answers nothing scores 0.
Repeated items in a list count once, at their first position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

K = 20


@dataclass(frozen=True)
class Quality:
    recall: float
    ndcg: float
    users: int


def recall_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    if not relevant:
        raise ValueError("a user with no relevant item has no recall")
    return len(set(_distinct(ranked)[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: set[int], k: int = K) -> float:
    if not relevant:
        raise ValueError("a user with no relevant item has no NDCG")
    gains = [1.0 if item in relevant else 0.0 for item in _distinct(ranked)[:k]]
    dcg = float(np.sum(np.asarray(gains) / _discounts(len(gains))))
    ideal = float(np.sum(1.0 / _discounts(min(k, len(relevant)))))
    return dcg / ideal


def evaluate(
    lists: Mapping[int, Sequence[int]], relevant: Mapping[int, set[int]], k: int = K
) -> Quality:
    """Mean Recall@k and NDCG@k over every user of `relevant` that has a relevant item."""
    users = [user for user, items in relevant.items() if items]
    if not users:
        raise ValueError("no user has a relevant item")
    recalls = [recall_at_k(lists.get(user, ()), relevant[user], k) for user in users]
    ndcgs = [ndcg_at_k(lists.get(user, ()), relevant[user], k) for user in users]
    return Quality(float(np.mean(recalls)), float(np.mean(ndcgs)), len(users))


def _discounts(n: int) -> np.ndarray:
    return np.log2(np.arange(2, n + 2, dtype=np.float64))


def _distinct(ranked: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ranked))
